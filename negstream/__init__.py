"""The app shell: the ``negstream`` command line, the worker process, the demo, producers."""
