//! DRMQ storage: the segmented partition log (see issue "storage").
