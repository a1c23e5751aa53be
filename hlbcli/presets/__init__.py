"""Presets: TOML recipes shipped with hlb (data, not code)."""
