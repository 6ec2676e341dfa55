"""The application level: one click end to end, archives, the persistent worker, the
command line and the demo."""
