//! Node packs on the wire: upload, validation, operator grants, the registry
//! of loaded packs, and the executor that runs their nodes in the sandbox.
pub mod boot;
pub mod error;
pub mod executor;
pub mod manifest;
pub mod policy;
pub mod registry;
pub mod remote;
pub mod tarball;

pub use boot::{attach, PackArgs};
pub use error::PackError;
pub use registry::{InstalledPack, PackService, PackSettings};
