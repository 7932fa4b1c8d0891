//! The wire: framing, message types, and (for WAN emulation) per-link delay queues.
//!
//! Owns: bytes on sockets. Knows the protocol's message shapes only to convert them.
pub mod frame;
pub mod placement;
pub mod timerfd;
pub mod wire;

pub use frame::{access, encode_frame, FrameEncoder, FrameError, FrameReader};
