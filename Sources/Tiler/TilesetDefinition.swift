import Foundation
import Pyramid
import Raster
import Yams

/// A tileset as an administrator writes it in `tilesets/<id>.yaml`.
public struct TilesetDefinition: Sendable, Codable, Hashable {
    public var id: String
    public var title: String
    public var abstract: String
    public var attribution: String
    /// Paths or glob patterns of source dalles, relative to the YAML file's folder.
    public var sources: [String]
    /// Grid (tile matrix set) ids to build.
    public var grids: [String]
    public var format: TileFormat
    public var quality: Int
    public var minZoom: Int?
    /// Deepest level per grid; computed from the source resolution when absent.
    public var maxZoom: Int?
    /// RGB written under transparent pixels of JPEG tiles (seen by clients that ignore masks).
    public var fill: [UInt8]
    /// Resampling for overviews (area averaging by default) and for reprojection.
    public var overviewResampling: Resampling
    public var reprojectionResampling: Resampling
    /// Who may see the tiles: everyone, or only inside published (`disponible`) project perimeters.
    public var publish: Publication
    /// The layer this tileset is a vintage of (`layer:`), and the vintage (`vintage:`, ISO 8601
    /// year, month or date). A vintage may stand alone (recorded in manifests and extracts); a
    /// layer needs a vintage.
    public var layer: String?
    public var vintage: Vintage?

    public static let defaultQuality = 85
    public static let defaultGrids = ["2154_5cm", "PM"]

    enum CodingKeys: String, CodingKey {
        case id, title, abstract, attribution, sources, grids, format, quality, fill, publish, layer, vintage
        case minZoom = "min_zoom"
        case maxZoom = "max_zoom"
        case overviewResampling = "overview_resampling"
        case reprojectionResampling = "reprojection_resampling"
    }

    public init(
        id: String, title: String? = nil, abstract: String = "", attribution: String = "", sources: [String],
        grids: [String] = TilesetDefinition.defaultGrids, format: TileFormat = .jpeg,
        quality: Int = TilesetDefinition.defaultQuality, minZoom: Int? = nil, maxZoom: Int? = nil,
        fill: [UInt8] = [255, 255, 255], overviewResampling: Resampling = .average,
        reprojectionResampling: Resampling = .bilinear, publish: Publication = .all, layer: String? = nil,
        vintage: Vintage? = nil
    ) {
        self.id = id
        self.title = title ?? id
        self.abstract = abstract
        self.attribution = attribution
        self.sources = sources
        self.grids = grids
        self.format = format
        self.quality = quality
        self.minZoom = minZoom
        self.maxZoom = maxZoom
        self.fill = fill
        self.overviewResampling = overviewResampling
        self.reprojectionResampling = reprojectionResampling
        self.publish = publish
        self.layer = layer
        self.vintage = vintage
    }

    public init(from decoder: Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        self.init(
            id: try c.decode(String.self, forKey: .id),
            title: try c.decodeIfPresent(String.self, forKey: .title),
            abstract: try c.decodeIfPresent(String.self, forKey: .abstract) ?? "",
            attribution: try c.decodeIfPresent(String.self, forKey: .attribution) ?? "",
            sources: try c.decode([String].self, forKey: .sources),
            grids: try c.decodeIfPresent([String].self, forKey: .grids) ?? Self.defaultGrids,
            format: try c.decodeIfPresent(TileFormat.self, forKey: .format) ?? .jpeg,
            quality: try c.decodeIfPresent(Int.self, forKey: .quality) ?? Self.defaultQuality,
            minZoom: try c.decodeIfPresent(Int.self, forKey: .minZoom),
            maxZoom: try c.decodeIfPresent(Int.self, forKey: .maxZoom),
            fill: try c.decodeIfPresent([UInt8].self, forKey: .fill) ?? [255, 255, 255],
            overviewResampling: try c.decodeIfPresent(Resampling.self, forKey: .overviewResampling) ?? .average,
            reprojectionResampling: try c.decodeIfPresent(Resampling.self, forKey: .reprojectionResampling)
                ?? .bilinear,
            publish: try c.decodeIfPresent(Publication.self, forKey: .publish) ?? .all,
            layer: try c.decodeIfPresent(String.self, forKey: .layer),
            vintage: try c.decodeIfPresent(String.self, forKey: .vintage).map {
                guard let v = Vintage($0) else {
                    throw TilerError.invalidTileset(
                        "vintage '\($0)' is not an ISO 8601 year, month or date (YYYY, YYYY-MM or YYYY-MM-DD)")
                }
                return v
            })
        try validate()
    }

    /// The deepest level a tileset may name: beyond any grid's (a 1 mm cell in Lambert-93).
    public static let deepestZoom = 30

    /// Rejects values the tiler cannot honour, with a message naming the field.
    public func validate() throws {
        guard id.range(of: "^[A-Za-z0-9][A-Za-z0-9._-]*$", options: .regularExpression) != nil else {
            throw TilerError.invalidTileset("id '\(id)' must be letters, digits, '.', '_' or '-'")
        }
        if let layer {
            guard layer.range(of: "^[A-Za-z0-9][A-Za-z0-9._-]*$", options: .regularExpression) != nil else {
                throw TilerError.invalidTileset("layer '\(layer)' must be letters, digits, '.', '_' or '-'")
            }
            guard layer != id else {
                throw TilerError.invalidTileset(
                    "layer '\(layer)' is the tileset's own id: layers and tilesets share one namespace")
            }
            guard vintage != nil else {
                throw TilerError.invalidTileset("layer '\(layer)' needs a vintage (vintage: 2024 or 2024-05)")
            }
        }
        guard (1...100).contains(quality) else { throw TilerError.invalidTileset("quality must be 1…100") }
        // A grid's levels are 0…its deepest (22 for 2154_5cm, 24 in PM): deeper asks are capped there.
        for (name, z) in [("min_zoom", minZoom), ("max_zoom", maxZoom)] {
            if let z, !(0...Self.deepestZoom).contains(z) {
                throw TilerError.invalidTileset("\(name) must be 0…\(Self.deepestZoom) (got \(z))")
            }
        }
        if let minZoom, let maxZoom, minZoom > maxZoom {
            throw TilerError.invalidTileset("min_zoom (\(minZoom)) is deeper than max_zoom (\(maxZoom))")
        }
        guard fill.count == 3 else { throw TilerError.invalidTileset("fill must be three numbers (R, G, B)") }
        guard !sources.isEmpty else { throw TilerError.invalidTileset("no sources") }
        guard !grids.isEmpty else { throw TilerError.invalidTileset("no grids") }
        guard [.average, .nearest].contains(overviewResampling) else {
            throw TilerError.invalidTileset("overview_resampling must be average or nearest")
        }
        guard [.bilinear, .nearest].contains(reprojectionResampling) else {
            throw TilerError.invalidTileset("reprojection_resampling must be bilinear or nearest")
        }
    }

    /// Reads a tileset file; relative source patterns are resolved against the file's folder.
    public static func load(path: String) throws -> TilesetDefinition {
        let text: String
        do { text = try String(contentsOfFile: path, encoding: .utf8) } catch {
            throw TilerError.invalidTileset("cannot read \(path)")
        }
        var def: TilesetDefinition
        do { def = try YAMLDecoder().decode(TilesetDefinition.self, from: text) } catch let e as TilerError {
            throw e
        } catch DecodingError.dataCorrupted(let context) where context.underlyingError is TilerError {
            // The decoder wraps the definition's own refusal: say it alone, naming the file.
            throw TilerError.invalidTileset("\(path): \((context.underlyingError as? TilerError)?.reason ?? "")")
        } catch {
            throw TilerError.invalidTileset("\(path): \(error)")
        }
        let base = (path as NSString).deletingLastPathComponent
        def.sources = def.sources.map {
            $0.hasPrefix("/") || $0.hasPrefix("s3://") ? $0 : (base as NSString).appendingPathComponent($0)
        }
        return def
    }
}

/// What can stop a tiling run, with enough context for the person running it.
public enum TilerError: Error, CustomStringConvertible {
    case invalidTileset(String)
    case noSources(String)
    case unknownGrid(String, known: [String])
    case resumeMismatch(String)
    case failedShards(Int)

    /// What is wrong, without the kind's prefix.
    var reason: String {
        if case .invalidTileset(let why) = self { return why }
        return description
    }

    public var description: String {
        switch self {
        case .invalidTileset(let why): "invalid tileset: \(why)"
        case .noSources(let why): "no usable source: \(why)"
        case .unknownGrid(let id, let known): "unknown grid '\(id)' (known: \(known.joined(separator: ", ")))"
        case .resumeMismatch(let why): "cannot resume: \(why)"
        case .failedShards(let n): "\(n) shard(s) failed"
        }
    }
}

/// Expands paths, directories and `*`/`?` patterns into sorted source files.
public func expandSources(_ patterns: [String]) -> [String] {
    var out = Set<String>()
    let exts = Set(["tif", "tiff", "jp2", "vrt", "jpg", "png"])
    for p in patterns {
        if let objects = ObjectSources.expand(p, extensions: exts) {
            out.formUnion(objects)
            continue
        }
        var isDir: ObjCBool = false
        if FileManager.default.fileExists(atPath: p, isDirectory: &isDir), isDir.boolValue {
            let e = FileManager.default.enumerator(atPath: p)
            while let f = e?.nextObject() as? String {
                if exts.contains((f as NSString).pathExtension.lowercased()) {
                    out.insert((p as NSString).appendingPathComponent(f))
                }
            }
        } else if p.contains("*") || p.contains("?") || p.contains("[") {
            var g = glob_t()
            defer { globfree(&g) }
            if glob(p, 0, nil, &g) == 0 {
                for i in 0..<Int(g.gl_pathc) {
                    if let s = g.gl_pathv[i] { out.insert(String(cString: s)) }
                }
            }
        } else {
            out.insert(p)
        }
    }
    return out.map { $0.hasPrefix("/vsi") ? $0 : URL(fileURLWithPath: $0).standardizedFileURL.path }.sorted()
}
