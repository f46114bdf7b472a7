//! Errors of the address space crate.

use std::error::Error;
use std::fmt;

/// Errors returned by [`Region`](crate::Region) and [`AddressSpace`](crate::AddressSpace).
#[derive(Debug, thiserror::Error)]
pub enum AddressSpaceError {
    /// Creating the anonymous host mapping of a RAM region failed.
    #[error("cannot map {size:#x} bytes of RAM for region {name:?}")]
    MapRam {
        /// Name of the RAM region.
        name: String,
        /// Requested size in bytes.
        size: u64,
        /// What failed.
        #[source]
        source: crate::ram_backing::RamBackingError,
    },
    /// A RAM region of size zero (or larger than the host address space) was requested.
    #[error("RAM region {name:?} cannot have a size of {size:#x} bytes")]
    BadRamSize {
        /// Name of the RAM region.
        name: String,
        /// Requested size in bytes.
        size: u64,
    },
    /// Subregions can only be added to, or removed from, container regions.
    #[error("region {name:?} is not a container")]
    NotAContainer {
        /// Name of the region that is not a container.
        name: String,
    },
    /// The subregion does not fit inside its container.
    #[error(
        "region {child:?} of {size:#x} bytes at offset {offset:#x} does not fit in \
         {container:?} of {container_size:#x} bytes"
    )]
    OutOfBounds {
        /// Name of the container.
        container: String,
        /// Size of the container.
        container_size: u64,
        /// Name of the subregion.
        child: String,
        /// Requested offset of the subregion inside the container.
        offset: u64,
        /// Size of the subregion.
        size: u64,
    },
    /// Adding the subregion would make a region contain itself.
    #[error("adding {child:?} to {container:?} would make {container:?} contain itself")]
    Cycle {
        /// Name of the container.
        container: String,
        /// Name of the subregion.
        child: String,
    },
    /// The region is already a direct subregion of this container.
    #[error("region {child:?} is already a subregion of {container:?}")]
    AlreadyASubregion {
        /// Name of the container.
        container: String,
        /// Name of the subregion.
        child: String,
    },
    /// The region to remove is not a direct subregion of this container.
    #[error("region {child:?} is not a subregion of {container:?}")]
    NotASubregion {
        /// Name of the container.
        container: String,
        /// Name of the region that was to be removed.
        child: String,
    },
    /// The root of an I/O port space is larger than 64 KiB.
    #[error("the port I/O space root {name:?} has {size:#x} bytes, more than 0x10000")]
    IoSpaceTooLarge {
        /// Name of the root region.
        name: String,
        /// Its size.
        size: u64,
    },
    /// A RAM region became visible in the port I/O space.
    #[error("RAM region {name:?} is mapped in the port I/O space at {base:#x}")]
    RamInIoSpace {
        /// Name of the RAM region.
        name: String,
        /// Port address where it showed up.
        base: u64,
    },
    /// Building the vm-memory view of guest RAM failed.
    #[error("cannot build the guest memory map")]
    BuildGuestMemory {
        /// What vm-memory said.
        #[source]
        source: vm_memory::GuestRegionCollectionError,
    },
    /// Describing a piece of a RAM region to vm-memory failed.
    #[error("cannot describe {size:#x} bytes at offset {offset:#x} of RAM region {name:?}")]
    RamPiece {
        /// Name of the RAM region.
        name: String,
        /// Offset of the piece inside the region.
        offset: u64,
        /// Size of the piece.
        size: u64,
        /// What vm-memory said.
        #[source]
        source: vm_memory::mmap::MmapRegionError,
    },
    /// A listener refused a change of the flat view.
    #[error("an address space listener failed")]
    Listener {
        /// The listener's own error.
        #[source]
        source: ListenerError,
    },
}

/// The error a [`Listener`](crate::Listener) returns, e.g. wrapping a failed KVM ioctl.
#[derive(Debug)]
pub struct ListenerError {
    /// What the listener was doing, e.g. "cannot add memory slot 3 for region \"ram\"".
    pub message: String,
    /// The underlying cause, if any.
    pub source: Option<Box<dyn Error + Send + Sync>>,
}

impl ListenerError {
    /// A listener error with a message and no underlying cause.
    pub fn new(message: impl Into<String>) -> Self {
        ListenerError {
            message: message.into(),
            source: None,
        }
    }

    /// A listener error with a message and the error that caused it.
    pub fn with_source(
        message: impl Into<String>,
        source: impl Into<Box<dyn Error + Send + Sync>>,
    ) -> Self {
        ListenerError {
            message: message.into(),
            source: Some(source.into()),
        }
    }
}

impl fmt::Display for ListenerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl Error for ListenerError {
    fn source(&self) -> Option<&(dyn Error + 'static)> {
        self.source
            .as_deref()
            .map(|source| source as &(dyn Error + 'static))
    }
}

impl From<ListenerError> for AddressSpaceError {
    fn from(source: ListenerError) -> Self {
        AddressSpaceError::Listener { source }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listener_error_exposes_its_cause_as_source() {
        let cause = std::io::Error::other("ioctl failed");
        let error = ListenerError::with_source("cannot add slot 0", cause);
        assert_eq!(error.to_string(), "cannot add slot 0");
        let source = error.source().map(ToString::to_string);
        assert_eq!(source.as_deref(), Some("ioctl failed"));
    }

    #[test]
    fn address_space_error_wraps_listener_error_as_source() {
        let error = AddressSpaceError::from(ListenerError::new("slot table full"));
        let source = error.source().map(ToString::to_string);
        assert_eq!(source.as_deref(), Some("slot table full"));
    }
}
