//! `nvptx::ptx_version`, as cubecl-cuda's runtime reads it on every device start.

pub mod ptx_version {
    use core::fmt;

    /// The PTX ISA version the LLVM backend would emit for the installed driver.
    ///
    /// Uninhabited: only the LLVM path consumes a version, and there is none here. NVRTC writes
    /// its own toolkit's version, so the C++ path never needs one.
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
    pub enum PtxVersion {}

    impl PtxVersion {
        /// Always `None`; the real crate maps a `cuDriverGetVersion` number (12.8 is `12080`) to
        /// the newest PTX it loads. `None` is what the real one answers for a driver it does not
        /// know, and the C++ path ignores the value.
        pub fn for_driver(_driver: i32) -> Option<Self> {
            None
        }
    }

    impl fmt::Display for PtxVersion {
        fn fmt(&self, _f: &mut fmt::Formatter<'_>) -> fmt::Result {
            match *self {}
        }
    }
}
