//! ONNX Runtime custom-op library for Tessera (domain `ai.tessera`).
//! The op registration arrives with the plugin issue.
