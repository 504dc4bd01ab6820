//! The `mergescope` application: the eframe workbench (`gui`) and the command line (`cli`).
//!
//! Everything here is a thin face on `mergescope-core`: it parses what the user asked for,
//! runs the engine on a worker thread, shows progress, and turns errors into one line.

pub mod cli;
pub mod gui;
