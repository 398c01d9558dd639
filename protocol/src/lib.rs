//! rba-protocol: the wire contract between the rba host and rba-device boards.
