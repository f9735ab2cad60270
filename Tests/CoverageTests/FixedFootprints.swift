import Coverage
import Raster

/// Tiled footprints given as they are: the protocol's second implementation, for a coverage
/// service without a store of pyramids (the server's reads its store: `StoreFootprints`).
struct FixedFootprints: TiledFootprints {
    var known: Set<String> = []
    /// Footprints by tileset, in Lambert-93.
    var areas: [String: Geometry] = [:]

    func tilesets() -> Set<String> { known }
    func footprint(of tileset: String) throws -> Geometry? { areas[tileset] }
}
