"""The artifact store (local and S3), artifact references and the stage cache policy."""
