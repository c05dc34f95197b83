//! Switchboard client (being written).
