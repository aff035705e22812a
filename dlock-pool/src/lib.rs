#![doc = include_str!("../README.md")]

pub use dlock_core::*;
