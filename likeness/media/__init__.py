"""Image operations: contact sheets, tiling, quality figures, loss masks."""
