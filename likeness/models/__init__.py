"""Model profiles, the process-wide pipeline cache, the tiny twins and compatibility shims."""
