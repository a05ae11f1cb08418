//! The CPU's tile unit (Intel AMX, palette 1) as one interface, `TileUnit`, with two implementations:
//! `TileModel`, a software model that follows the Intel SDM's pseudo-code (every machine runs it: the
//! AMX kernels are tested on it against f64 sums), and `AmxTiles`, the hardware instructions through
//! `asm!` (stable Rust has no AMX intrinsics). Kernels are written once, generic over `U: TileUnit`.
//!
//! The instructions covered are the ones hrk's kernels use: LDTILECFG, TILEZERO, TILELOADD, TILESTORED,
//! TDPBF16PS and TILERELEASE. Tile numbers are const generics, as they are immediates in the encoding.
//!
//! Both implementations check each instruction's operands against the loaded configuration the same way
//! (the SDM's #GP/#UD conditions, `check_dot` and `check_config`), so a wrong shape panics with a message
//! naming the tiles instead of a SIGILL on hardware.
//!
//! Whether the hardware may be used (CPUID, XCR0 and the kernel's permission for the tile state) is
//! `crate::host_isa`'s to say; this module only runs the instructions it is told to.

mod hardware;
mod model;

pub use hardware::AmxTiles;
#[cfg(test)]
pub(crate) use model::test_programs;
pub use model::TileModel;

/// Tile registers of palette 1 (tmm0–tmm7).
pub const TILE_REGISTERS: usize = 8;
/// Most rows of a palette-1 tile.
pub const MAX_ROWS: usize = 16;
/// Most bytes per row of a palette-1 tile.
pub const MAX_ROW_BYTES: usize = 64;

/// One tile's configured shape: `rows` rows of `row_bytes` bytes (both zero: the tile is unused).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TileShape {
    pub rows: u8,
    pub row_bytes: u16,
}

/// The 64-byte LDTILECFG operand, palette 1.
#[repr(C, align(64))]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TileConfig {
    palette: u8,
    start_row: u8,
    reserved: [u8; 14],
    /// Bytes per row of tiles 0..16 (only 0..8 exist in palette 1; the rest must be zero).
    colsb: [u16; 16],
    rows: [u8; 16],
}

const _: () = assert!(std::mem::size_of::<TileConfig>() == 64);

impl TileConfig {
    /// Palette 1 with these shapes of tmm0–tmm7. Panics on a shape palette 1 cannot hold (more than
    /// 16 rows or 64 bytes per row, or a row width that is not a multiple of 4 bytes — hrk loads whole
    /// 32-bit elements), or one that is half unused (rows or bytes zero, not both): LDTILECFG would
    /// raise #GP on the first two.
    pub fn new(shapes: [TileShape; TILE_REGISTERS]) -> TileConfig {
        let mut cfg = TileConfig { palette: 1, start_row: 0, reserved: [0; 14], colsb: [0; 16], rows: [0; 16] };
        for (t, s) in shapes.iter().enumerate() {
            assert!(
                usize::from(s.rows) <= MAX_ROWS && usize::from(s.row_bytes) <= MAX_ROW_BYTES,
                "tile config: tmm{t} is {} rows × {} bytes, palette 1 holds at most {MAX_ROWS} × {MAX_ROW_BYTES}",
                s.rows,
                s.row_bytes
            );
            assert!(s.row_bytes % 4 == 0, "tile config: tmm{t}'s row of {} bytes is not whole dwords", s.row_bytes);
            assert!(
                (s.rows == 0) == (s.row_bytes == 0),
                "tile config: tmm{t} is {} rows × {} bytes (an unused tile has both zero)",
                s.rows,
                s.row_bytes
            );
            cfg.colsb[t] = s.row_bytes;
            cfg.rows[t] = s.rows;
        }
        cfg
    }

    /// Tile t's shape.
    pub fn shape(&self, t: usize) -> TileShape {
        assert!(t < TILE_REGISTERS, "tile config: there is no tmm{t} in palette 1");
        TileShape { rows: self.rows[t], row_bytes: self.colsb[t] }
    }

    /// The raw 64 bytes, as LDTILECFG reads them.
    pub fn as_bytes(&self) -> &[u8; 64] {
        // SAFETY: TileConfig is repr(C), 64 bytes (asserted at compile time), with no padding (u8, u8,
        // [u8; 14], [u16; 16] at offset 16, [u8; 16] at 48).
        unsafe { &*(self as *const TileConfig).cast::<[u8; 64]>() }
    }
}

/// The tile instructions hrk's kernels use; tile numbers are const generics (immediates in the
/// hardware encoding). Every method but `configure` needs a configuration loaded.
pub trait TileUnit {
    /// LDTILECFG: loads the shapes and zeroes every tile.
    fn configure(&mut self, cfg: &TileConfig);
    /// TILEZERO: tile T all zero.
    fn zero<const T: u8>(&mut self);
    /// TILELOADD: row r of tile T from `base + r·stride` (the configured rows × row_bytes; the rest of
    /// the register zeroed).
    ///
    /// # Safety
    /// rows × row_bytes of T's configured shape readable at base + r·stride.
    unsafe fn load<const T: u8>(&mut self, base: *const u8, stride: usize);
    /// TILESTORED: row r of tile T (its configured row_bytes) to `base + r·stride`.
    ///
    /// # Safety
    /// As `load`, writable.
    unsafe fn store<const T: u8>(&mut self, base: *mut u8, stride: usize);
    /// TDPBF16PS: C += A·B with A rows of bf16 pairs (K = A.row_bytes / 4 pairs) and B in the pair
    /// (VNNI) layout, f32 sums (see `TileModel` for the rounding).
    fn dot_bf16<const C: u8, const A: u8, const B: u8>(&mut self);
    /// TILERELEASE: back to the unconfigured state.
    fn release(&mut self);
}

/// The loaded configuration, or a panic naming the instruction that needs one.
fn configured<'a>(cfg: &'a Option<TileConfig>, instruction: &str) -> &'a TileConfig {
    cfg.as_ref().unwrap_or_else(|| panic!("{instruction}: the tile unit is not configured (LDTILECFG first)"))
}

/// Tile T exists and is configured (the #UD conditions every tile instruction shares).
fn check_tile(cfg: &TileConfig, t: u8, instruction: &str) -> TileShape {
    assert!(usize::from(t) < TILE_REGISTERS, "{instruction}: there is no tmm{t} in palette 1");
    let s = cfg.shape(usize::from(t));
    assert!(s.rows > 0, "{instruction}: tmm{t} is not configured (0 rows)");
    s
}

/// TDPBF16PS's #UD conditions on the shapes of C, A and B (SDM exception class AMX-E4): C.rows ==
/// A.rows, C.row_bytes == B.row_bytes, A.row_bytes == 4·B.rows, the three tiles distinct.
fn check_dot(cfg: &TileConfig, c: u8, a: u8, b: u8) -> (TileShape, TileShape, TileShape) {
    const OP: &str = "tdpbf16ps";
    let (sc, sa, sb) = (check_tile(cfg, c, OP), check_tile(cfg, a, OP), check_tile(cfg, b, OP));
    assert!(c != a && c != b && a != b, "{OP}: tmm{c}, tmm{a}, tmm{b} must be three different tiles");
    assert!(sc.rows == sa.rows, "{OP}: tmm{c} has {} rows, tmm{a} {} (must be equal)", sc.rows, sa.rows);
    assert!(
        sc.row_bytes == sb.row_bytes,
        "{OP}: tmm{c} rows are {} bytes, tmm{b} rows {} (must be equal)",
        sc.row_bytes,
        sb.row_bytes
    );
    assert!(
        usize::from(sa.row_bytes) == 4 * usize::from(sb.rows),
        "{OP}: tmm{a} rows are {} bytes, 4 × tmm{b}'s {} rows expected",
        sa.row_bytes,
        sb.rows
    );
    (sc, sa, sb)
}
