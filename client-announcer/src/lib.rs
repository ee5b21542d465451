//! The client side of cfi. Today it holds the agent binary, which the
//! server runs over SSH; the agent's logic lives in `cfi-sync` so both
//! sides of the protocol are tested together.
