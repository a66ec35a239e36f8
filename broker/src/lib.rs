//! DRMQ broker.
