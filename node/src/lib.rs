//! Switchboard node (being written).
