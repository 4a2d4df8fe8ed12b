//! Integration tests, compiled as one binary; each test works in its own temporary directory.

mod sim;
