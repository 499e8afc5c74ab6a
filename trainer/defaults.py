"""Defaults that the model, the data readers and the CLI share, importable without torch (so
that `tecaflow --help` stays light)."""

MAX_FRAMES = 4096  # longest frame sequence the model's positional table covers
DEFAULT_MAX_FRAMES = 500  # frames kept per segment and modality unless --max-frames says otherwise
DEFAULT_MODALITY_DROPOUT = 0.3  # training default of modality dropout's p (chosen on CMU-MOSI, README)
DEFAULT_MAX_CONTEXT_TOKENS = 64  # context tokens a model with context reads (the newest kept), unless --context-tokens
