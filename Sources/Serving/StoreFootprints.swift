import Coverage
import Foundation
import Pyramid
import Raster
import Synchronization

/// Coverage's view of a store of pyramids: its tilesets, and the footprint the tiler records
/// beside each pyramid (`<store>/<tileset>/<grid>/footprint.json`), read from a folder, or through
/// a catalog's sources for any store. Of a tileset's grids with a
/// footprint, the one `preferredPyramid` picks for `grid` (the server's `render_grid`) counts.
public final class StoreFootprints: TiledFootprints {
    public let store: String
    /// The grid whose footprint counts when the tileset has it.
    public let grid: String
    private let knownTilesets: (@Sendable () -> Set<String>)?
    /// The catalog whose pyramids' sources answer, for a store that is not a folder.
    private let catalog: PyramidCatalog?
    /// Footprints read, by path, with their file's modification time: a rebuilt pyramid's is read again.
    private let read = Mutex<[String: (modified: Date, crs: String, lambert93: Geometry)]>([:])

    /// `tilesets`, when given, answers the tilesets of this server (the server's catalog); by
    /// default they are the folders of `store` holding at least one `<grid>/pyramid.json`.
    public init(
        store: String, grid: String = defaultRenderGrid,
        tilesets: (@Sendable () -> Set<String>)? = nil
    ) {
        self.store = store
        self.grid = grid
        knownTilesets = tilesets
        catalog = nil
    }

    /// The footprints of the pyramids `catalog` serves, read through their sources: for any store
    /// (an object store's are fetched and kept a while by its sources).
    public init(catalog: PyramidCatalog, grid: String = defaultRenderGrid) {
        store = catalog.store.location
        self.grid = grid
        knownTilesets = { Set(catalog.tilesets) }
        self.catalog = catalog
    }

    public func tilesets() -> Set<String> {
        if let knownTilesets { return knownTilesets() }
        return Set(((try? FolderStore(store).list()) ?? []).map(\.tileset))
    }

    public func footprint(of tileset: String) throws -> Geometry? {
        if let catalog {
            // A footprint that cannot be read has no CRS here, as below.
            let recorded = catalog.pyramids(of: tileset).compactMap {
                p -> (ServedPyramid, Result<Geometry, any Error>)? in
                do {
                    return try p.source.tiledFootprint().map { (p, .success($0)) }
                } catch {
                    return (p, .failure(error))
                }
            }
            let chosen = preferredPyramid(
                among: recorded, setting: grid, grid: { $0.0.grid },
                crs: { (try? $0.1.get()) == nil ? "" : $0.0.manifest.tileMatrixSet.crs })
            return try chosen?.1.get()
        }
        let dir = (store as NSString).appendingPathComponent(tileset)
        guard let grids = try? FileManager.default.contentsOfDirectory(atPath: dir).sorted() else { return nil }
        let recorded = grids.filter { !$0.hasPrefix(".") }.map {
            (grid: $0, path: (dir as NSString).appendingPathComponent("\($0)/\(TiledFootprint.fileName)"))
        }.filter { FileManager.default.fileExists(atPath: $0.path) }
        // A footprint that cannot be read has no CRS here: it is chosen only as a last resort, and
        // then its error is the answer.
        let chosen = preferredPyramid(
            among: recorded, setting: grid, grid: { $0.grid }, crs: { (try? self.load($0.path).crs) ?? "" })
        return try chosen.map { try load($0.path).lambert93 }
    }

    /// A footprint file, read again only when it has changed.
    private func load(_ path: String) throws -> (crs: String, lambert93: Geometry) {
        let modified = (try FileManager.default.attributesOfItem(atPath: path))[.modificationDate] as? Date
        if let modified, let known = read.withLock({ $0[path] }), known.modified == modified {
            return (known.crs, known.lambert93)
        }
        let footprint = try TiledFootprint.load(path: path)
        if let modified { read.withLock { $0[path] = (modified, footprint.crs, footprint.lambert93) } }
        return footprint
    }
}
