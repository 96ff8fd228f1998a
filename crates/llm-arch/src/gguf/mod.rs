//! GGUF reader (helper fills this in).
