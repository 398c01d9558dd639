//! rba-device library: the board runtime.
