"""The web service: a page to drop a MIDI file on and JSON endpoints (``harmonixr serve``).
FastAPI and uvicorn are imported by ``serve.app``, never by ``import harmonixr``."""
