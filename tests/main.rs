//! The one integration-test binary: every test starts a real server on
//! 127.0.0.1:0 with its own data directory and talks to it through the real
//! SDK (and raw HTTP where a test needs to send bad input).

mod it;
