//! Address sets as sorted, merged intervals.
