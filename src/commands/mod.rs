//! The CLI verbs beyond `run` and `plan`: `why`, `status`, `gc` and `export` (their output
//! formatting; the work is in `store` and `exec`).

pub mod embed;
pub mod export;
pub mod gc;
pub mod status;
pub mod why;
