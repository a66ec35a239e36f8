//! DRMQ wire protocol.
