//! RESP2 and RESP3 frames. (Being written.)
