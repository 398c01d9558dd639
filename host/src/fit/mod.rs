//! Closed-form maps (METHOD.md, "Fitting"):
//!
//! - [`lstsq`]: least squares from streamed sufficient statistics.
//! - [`compensated`]: the order-independent sums those statistics are kept in.
//! - [`fold`]: multiplying a map into the linear layer that ends the block
//!   before a span (no extra node).
//! - [`probe`]: the closed-form linear probe head `rba probe` appends.

pub mod compensated;
pub mod fold;
pub mod lstsq;
pub mod probe;

pub use lstsq::{fit, rows_view, Cross, Fit, FitError, FitKind, Moments, ShapeMismatch, Solver};
