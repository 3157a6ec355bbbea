//! Store data and host functions shared by the core-module ABIs.
