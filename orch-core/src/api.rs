//! Server-side operations on objects: apply, delete, scale (being written).
