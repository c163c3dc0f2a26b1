"""HTTP APIs served beside the UI on the same server: each module exposes `router(ctx)`."""
