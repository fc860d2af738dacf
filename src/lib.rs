//! minimq: workspace root; the end-to-end tests live in `tests/`.
