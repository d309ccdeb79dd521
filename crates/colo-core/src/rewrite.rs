//! rewrite (in progress)
