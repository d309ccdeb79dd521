//! reassembly (in progress)
