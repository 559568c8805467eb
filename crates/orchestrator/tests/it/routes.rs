//! The route stream and readiness.
