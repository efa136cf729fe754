"""The byte store: OpenDAL (local folder or S3/R2) behind a small async interface."""
