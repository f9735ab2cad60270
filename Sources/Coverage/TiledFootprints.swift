import Raster

/// What Coverage needs to know of the pyramids, without knowing how they are stored: the
/// tilesets this server has and the area each really covers. The server and the command line
/// answer from their store of pyramids (`StoreFootprints`, in Server).
public protocol TiledFootprints: Sendable {
    /// The tilesets this server has: those a `disponible` project's deliverables may name.
    func tilesets() -> Set<String>
    /// The area actually tiled for `tileset`, in Lambert-93; nil when nothing of it is tiled.
    func footprint(of tileset: String) throws -> Geometry?
}
