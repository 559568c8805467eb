//! One module per subcommand, each a thin call into a library.

pub mod up;
