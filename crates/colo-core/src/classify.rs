//! classify (in progress)
