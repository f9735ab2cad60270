import Foundation
import GeoGrid
import Pyramid
import Raster
import Synchronization

/// Output formats of an extract.
public enum ExtractFormat: String, Codable, Sendable, CaseIterable {
    /// Tiled GeoTIFF, JPEG YCbCr with an internal mask.
    case gtiff
    /// Cloud Optimized GeoTIFF (the same, with overviews).
    case cog
    /// JPEG + world file (.jgw) + .prj in a zip; outside the polygon is white.
    case jpeg
    /// PNG (RGBA) + world file (.pgw) + .prj in a zip.
    case png
    /// JPEG 2000 with an alpha band.
    case jp2

    public var fileExtension: String {
        switch self {
        case .gtiff, .cog: "tif"
        case .jpeg, .png: "zip"
        case .jp2: "jp2"
        }
    }

    public var mimeType: String {
        switch self {
        case .gtiff, .cog: "image/tiff"
        case .jpeg, .png: "application/zip"
        case .jp2: "image/jp2"
        }
    }

    /// Formats written whole in memory (the others are written in strips).
    var inMemory: Bool { self == .jpeg || self == .png || self == .jp2 }
}

/// Why an extract is refused; `status` is the HTTP status the API answers.
public struct ExtractError: Error, CustomStringConvertible, Sendable {
    /// What is wrong, for the client (the server says it as a status).
    public enum Kind: Sendable, Equatable {
        /// A parameter out of its range, a geometry that is not a polygon, an unknown CRS.
        case badInput
        /// The output would be larger than the limits allow.
        case tooLarge
        /// The area lies outside what the client may see (the published areas).
        case forbidden
        /// Well-formed, but nothing to extract there (outside the coverage).
        case unprocessable
        /// The writing was asked to stop.
        case cancelled
    }
    public var kind: Kind
    public var message: String
    /// The request parameter at fault, when there is one (`resolution`, `buffer_m`, `geometry`).
    public var parameter: String?
    public init(_ kind: Kind, _ message: String, parameter: String? = nil) {
        self.kind = kind
        self.message = message
        self.parameter = parameter
    }
    public var description: String { message }
}

/// Limits on what may be extracted.
public struct ExtractLimits: Sendable, Codable, Equatable {
    /// Largest output answered at once; larger ones are queued (a 20 ha work site at 5 cm, with
    /// the margin of its bounding box: 20 ha alone is 80 Mpx).
    public var directPixels = 128_000_000
    /// Largest output at all.
    public var maxPixels = 4_000_000_000
    /// Largest output of the formats written in memory (JPEG, PNG, JPEG 2000).
    public var maxInMemoryPixels = 400_000_000
    /// Largest polygon area, in km².
    public var maxAreaKm2 = 200.0
    public var maxVertices = 100_000
    /// Most vertices of an invalid polygon that is repaired: GEOS' repair of a polygon that
    /// crosses itself many times costs more than its vertices (a 7-times-winding star of 4000
    /// vertices took seconds), and it cannot be interrupted. Above this the request is refused.
    public var maxRepairVertices = ExtractLimits.defaultMaxRepairVertices
    /// Finest and coarsest output pixel size, in metres (units of the output CRS).
    public var minResolution = ExtractLimits.defaultMinResolution
    public var maxResolution = ExtractLimits.defaultMaxResolution
    /// Largest `buffer_m`, in metres.
    public var maxBufferMetres = ExtractLimits.defaultMaxBufferMetres

    public static let defaultMaxRepairVertices = 2_000
    public static let defaultMinResolution = 0.01
    public static let defaultMaxResolution = 1000.0
    public static let defaultMaxBufferMetres = 10_000.0

    public init() {}

    enum CodingKeys: String, CodingKey {
        case directPixels = "direct_pixels"
        case maxPixels = "max_pixels"
        case maxInMemoryPixels = "max_in_memory_pixels"
        case maxAreaKm2 = "max_area_km2"
        case maxVertices = "max_vertices"
        case maxRepairVertices = "max_repair_vertices"
        case minResolution = "min_resolution"
        case maxResolution = "max_resolution"
        case maxBufferMetres = "max_buffer_m"
    }

    public init(from decoder: Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        let d = ExtractLimits()
        directPixels = try c.decodeIfPresent(Int.self, forKey: .directPixels) ?? d.directPixels
        maxPixels = try c.decodeIfPresent(Int.self, forKey: .maxPixels) ?? d.maxPixels
        maxInMemoryPixels = try c.decodeIfPresent(Int.self, forKey: .maxInMemoryPixels) ?? d.maxInMemoryPixels
        maxAreaKm2 = try c.decodeIfPresent(Double.self, forKey: .maxAreaKm2) ?? d.maxAreaKm2
        maxVertices = try c.decodeIfPresent(Int.self, forKey: .maxVertices) ?? d.maxVertices
        maxRepairVertices = try c.decodeIfPresent(Int.self, forKey: .maxRepairVertices) ?? d.maxRepairVertices
        minResolution = try c.decodeIfPresent(Double.self, forKey: .minResolution) ?? d.minResolution
        maxResolution = try c.decodeIfPresent(Double.self, forKey: .maxResolution) ?? d.maxResolution
        maxBufferMetres = try c.decodeIfPresent(Double.self, forKey: .maxBufferMetres) ?? d.maxBufferMetres
    }
}

/// A checked extract: the clipping polygon in the output CRS and the output grid.
public struct ExtractPlan: Sendable {
    public var tileset: String
    public var format: ExtractFormat
    public var crs: String
    /// The polygon (buffered, clipped to what may be shown), WKT in `crs`.
    public var polygonWKT: String
    public var window: RenderWindow
    public var resolution: Double
    /// The polygon was invalid and has been repaired.
    public var repaired: Bool
    /// What the file records of its source (layer, vintage, tileset): GeoTIFF metadata items, or
    /// a `.txt` sidecar in a zip.
    public var metadata: [(key: String, value: String)] = []
    public var pixels: Int { window.width * window.height }
    /// A rough size of the result (JPEG-compressed imagery ≈ 0.4 byte per pixel).
    public var estimatedBytes: Int { format == .png ? pixels * 3 : pixels * 2 / 5 }
}

/// Plans and writes extracts: clipped exactly to a polygon, georeferenced, in any projected CRS.
public enum Extractor {
    /// Checks a request and computes its output grid. `geometry` is in `geometryCRS`; `allowed`
    /// (Lambert-93) restricts it to what the caller may see; `coverage` (Lambert-93) is where the
    /// pyramid has data.
    public static func plan(
        tileset: String, geometry: Geometry, geometryCRS: String, bufferMetres: Double, crs: String,
        resolution: Double?, format: ExtractFormat, nativeResolution: Double, coverage: Geometry,
        allowed: Geometry?, limits: ExtractLimits
    ) throws(ExtractError) -> ExtractPlan {
        do {
            return try planOrThrow(
                tileset: tileset, geometry: geometry, geometryCRS: geometryCRS, bufferMetres: bufferMetres, crs: crs,
                resolution: resolution, format: format, nativeResolution: nativeResolution, coverage: coverage,
                allowed: allowed, limits: limits)
        } catch let e as ExtractError {
            throw e
        } catch {
            throw ExtractError(.badInput, "\(error)")
        }
    }

    private static func planOrThrow(
        tileset: String, geometry: Geometry, geometryCRS: String, bufferMetres: Double, crs: String,
        resolution: Double?, format: ExtractFormat, nativeResolution: Double, coverage: Geometry,
        allowed: Geometry?, limits: ExtractLimits
    ) throws -> ExtractPlan {
        guard geometry.isAreal else {
            throw ExtractError(.badInput, "the geometry must be a Polygon or MultiPolygon, not \(geometry.typeName)")
        }
        guard geometry.pointCount <= limits.maxVertices else {
            throw ExtractError(
                .badInput,
                "the geometry has \(geometry.pointCount) vertices; at most \(limits.maxVertices) are accepted")
        }
        // Every number is checked before any use: NaN fails both comparisons.
        guard bufferMetres >= 0, bufferMetres <= limits.maxBufferMetres else {
            throw ExtractError(
                .badInput, "buffer_m must be between 0 and \(limits.maxBufferMetres) m", parameter: "buffer_m")
        }
        if let resolution {
            guard resolution >= limits.minResolution, resolution <= limits.maxResolution else {
                throw ExtractError(
                    .badInput, "resolution must be between \(limits.minResolution) and \(limits.maxResolution) m",
                    parameter: "resolution")
            }
        }
        let source: SpatialReference
        let target: SpatialReference
        do { source = try SpatialReference(geometryCRS) } catch {
            throw ExtractError(.badInput, "unknown CRS '\(geometryCRS)' for the geometry")
        }
        do { target = try SpatialReference(crs) } catch { throw ExtractError(.badInput, "unknown CRS '\(crs)'") }
        guard !target.isGeographic else {
            throw ExtractError(.badInput, "the output CRS must be projected (metres), e.g. EPSG:2154 or EPSG:3949")
        }
        let l93 = try SpatialReference(epsg: 2154)
        var g = source.isSame(as: l93) ? geometry : try geometry.transformed(CoordinateTransform(from: source, to: l93))
        var repaired = false
        if !g.isValid {
            // Checked before the reason is asked for: that is another pass as costly as the test.
            guard g.pointCount <= limits.maxRepairVertices else {
                throw ExtractError(
                    .badInput,
                    "the geometry is invalid and has \(g.pointCount) vertices; only geometries of at most \(limits.maxRepairVertices) vertices are repaired here: fix it first (QGIS: Fix geometries)",
                    parameter: "geometry")
            }
            let reason = g.invalidityReason ?? "invalid"
            // Safe only when the repair keeps a real area (a bow-tie keeps both lobes); GEOS gives
            // up on some (a ring whose last position does not repeat its first).
            guard let fixed = try? g.makeValid(), !fixed.isEmpty, fixed.area > 0 else {
                throw ExtractError(.badInput, "the geometry is invalid and cannot be repaired: \(reason)")
            }
            g = fixed
            repaired = true
        }
        if bufferMetres > 0 { g = try g.buffer(bufferMetres) }
        let km2 = g.area / 1e6
        guard km2 <= limits.maxAreaKm2 else {
            throw ExtractError(
                .tooLarge, String(format: "the polygon covers %.2f km²; the limit is %.0f km²", km2, limits.maxAreaKm2))
        }
        guard g.intersects(coverage) else {
            throw ExtractError(.unprocessable, "the geometry lies outside the coverage of '\(tileset)'")
        }
        if let allowed {
            g = try g.intersection(allowed).polygonsOnly()
            guard !g.isEmpty, g.area > 0 else {
                throw ExtractError(.forbidden, "the geometry lies outside the published areas of '\(tileset)'")
            }
        }
        let out = target.isSame(as: l93) ? g : try g.transformed(CoordinateTransform(from: l93, to: target))
        let res = resolution ?? nativeResolution
        guard res > 0, res <= limits.maxResolution else {
            throw ExtractError(
                .badInput, "resolution must be between 0 and \(limits.maxResolution) m", parameter: "resolution")
        }
        let e = out.envelope
        // Snap to multiples of the resolution, so extracts of one area line up.
        let minX = (e.minX / res).rounded(.down) * res
        let maxY = (e.maxY / res).rounded(.up) * res
        // Sizes stay in Double until they are known to fit (a tiny resolution or a CRS with huge
        // coordinates makes them overflow any integer).
        let columns = ((e.maxX - minX) / res).rounded(.up)
        let rows = ((maxY - e.minY) / res).rounded(.up)
        guard columns.isFinite, rows.isFinite, columns >= 1, rows >= 1,
            columns * rows <= Double(limits.maxPixels)
        else {
            throw ExtractError(
                .tooLarge,
                "the output would be \(Self.format(columns))×\(Self.format(rows)) px; the limit is \(limits.maxPixels) px (coarsen resolution)",
                parameter: "resolution")
        }
        let width = Int(columns)
        let height = Int(rows)
        let pixels = columns * rows
        if format.inMemory, pixels > Double(limits.maxInMemoryPixels) {
            throw ExtractError(
                .tooLarge,
                "\(format.rawValue) output is limited to \(limits.maxInMemoryPixels) px (this one is \(width)×\(height)); use gtiff or cog"
            )
        }
        if format == .jpeg, width > 65_500 || height > 65_500 {
            throw ExtractError(.tooLarge, "JPEG images are limited to 65500 px a side; use gtiff or cog")
        }
        let window = RenderWindow(
            bounds: BoundingBox(
                minX: minX, minY: maxY - Double(height) * res, maxX: minX + Double(width) * res, maxY: maxY),
            width: width, height: height)
        return ExtractPlan(
            tileset: tileset, format: format, crs: crs, polygonWKT: out.wkt, window: window, resolution: res,
            repaired: repaired)
    }

    /// A pixel count for a message, whatever its size.
    static func format(_ v: Double) -> String {
        v.isFinite && abs(v) < 1e15 ? String(Int(v)) : String(format: "%.3g", v)
    }

    /// Renders a window with several renderers at once, each on a band of rows.
    static func renderStrip(
        _ window: RenderWindow, resolution: Double, renderers: [Renderer], into rgba: UnsafeMutablePointer<UInt8>
    ) throws {
        let parts = min(renderers.count, max(1, window.height / 64))
        let rowsPer = (window.height + parts - 1) / parts
        let failure = Mutex<Error?>(nil)
        let output = UnsafeSendablePointer(rgba)
        DispatchQueue.concurrentPerform(iterations: parts) { i in
            let y0 = i * rowsPer
            let rows = min(rowsPer, window.height - y0)
            guard rows > 0 else { return }
            let part = RenderWindow(
                bounds: BoundingBox(
                    minX: window.bounds.minX, minY: window.bounds.maxY - Double(y0 + rows) * resolution,
                    maxX: window.bounds.maxX, maxY: window.bounds.maxY - Double(y0) * resolution),
                width: window.width, height: rows)
            do {
                try renderers[i].render(part, into: output.pointer + y0 * window.width * 4)
            } catch {
                failure.withLock { $0 = $0 ?? error }
            }
        }
        if let e = failure.withLock({ $0 }) { throw e }
    }

    /// Writes the extract to `path`. `progress` gets the fraction done and returns false to cancel.
    public static func write(
        _ plan: ExtractPlan, pyramid: any PyramidSource, to path: String, progress: (Double) -> Bool = { _ in true }
    ) throws {
        let folder = (path as NSString).deletingLastPathComponent
        let tmp = (folder.isEmpty ? "." : folder) + "/.\((path as NSString).lastPathComponent).tmp"
        // Whatever stops the write (an error, a cancel, `path` a folder) leaves no partial file.
        var committed = false
        defer { if !committed { unlink(tmp) } }
        func commit() throws {
            guard rename(tmp, path) == 0 else {
                throw RasterError("cannot write \(path): \(String(cString: strerror(errno)).lowercased())")
            }
            committed = true
        }
        if let aligned = TileAlignedExtract(plan: plan, pyramid: pyramid) {
            try aligned.write(to: tmp, polygonWKT: plan.polygonWKT, metadata: plan.metadata, progress: progress)
            try commit()
            _ = progress(1)
            return
        }
        let crs = try SpatialReference(plan.crs)
        // One renderer per core (each holds a PROJ transform); a strip is split between them.
        let threads = max(1, min(ProcessInfo.processInfo.activeProcessorCount, 8))
        let renderers = try (0..<threads).map { _ in try Renderer(pyramid: pyramid, crs: crs) }
        let polygon = try Geometry.fromWKT(plan.polygonWKT)
        let inMemory = plan.format.inMemory
        let w = plan.window.width
        let h = plan.window.height
        // Strips of whole 512-row GeoTIFF blocks (≈ 8 Mpx), so each write hands GDAL complete
        // blocks to compress in parallel.
        let strip = max(1, min(h, max(512, (8 << 20) / max(1, w) / 512 * 512)))
        let work = tmp + ".d"
        try FileManager.default.createDirectory(atPath: work, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: work) }
        // JPEG has no alpha; GeoTIFFs carry RGB and an internal mask.
        let bands = plan.format == .jpeg || !inMemory ? 3 : 4
        let out: Dataset =
            inMemory
            ? try Dataset.create("", driver: "MEM", width: w, height: h, bands: bands)
            : try Dataset.create(
                plan.format == .cog ? work + "/base.tif" : tmp, driver: "GTiff", width: w, height: h, bands: 3,
                options: [
                    "TILED=YES", "BLOCKXSIZE=512", "BLOCKYSIZE=512", "COMPRESS=JPEG", "PHOTOMETRIC=YCBCR",
                    "JPEG_QUALITY=90", "BIGTIFF=IF_SAFER", "NUM_THREADS=ALL_CPUS",
                ])
        // Exactly the plan's pixel size (the window's own division carries rounding noise).
        out.geoTransform = GeoTransform(
            originX: plan.window.bounds.minX, originY: plan.window.bounds.maxY, resolution: plan.resolution)
        out.projectionWKT = crs.wkt
        if !inMemory { try out.createMask() } else if bands == 4 { out.setColorInterpretation(band: 4, "Alpha") }
        for (k, v) in plan.metadata { out.setMetadataItem(k, v) }
        let rgba = UnsafeMutablePointer<UInt8>.allocate(capacity: w * strip * 4)
        let mask = UnsafeMutablePointer<UInt8>.allocate(capacity: w * strip)
        defer {
            rgba.deallocate()
            mask.deallocate()
        }
        var y = 0
        while y < h {
            let rows = min(strip, h - y)
            let window = RenderWindow(
                bounds: BoundingBox(
                    minX: plan.window.bounds.minX, minY: plan.window.bounds.maxY - Double(y + rows) * plan.resolution,
                    maxX: plan.window.bounds.maxX, maxY: plan.window.bounds.maxY - Double(y) * plan.resolution),
                width: w, height: rows)
            try renderStrip(window, resolution: plan.resolution, renderers: renderers, into: rgba)
            try polygon.rasterize(into: mask, width: w, height: rows, transform: window.transform)
            for i in 0..<(w * rows) {
                let a = min(mask[i], rgba[i * 4 + 3])
                mask[i] = a == 0 ? 0 : 255
                if plan.format == .jpeg, a < 255 {
                    // JPEG has no transparency: white outside, blended at the edge.
                    for k in 0..<3 {
                        rgba[i * 4 + k] = UInt8((Int(rgba[i * 4 + k]) * Int(a) + 255 * (255 - Int(a))) / 255)
                    }
                }
                rgba[i * 4 + 3] = a
            }
            try out.write(
                x: 0, y: y, width: w, height: rows, bands: Array(1...bands), from: rgba, pixelSpace: 4, lineSpace: w * 4
            )
            if !inMemory { try out.writeMask(x: 0, y: y, width: w, height: rows, from: mask) }
            y += rows
            guard progress(Double(y) / Double(h) * (plan.format == .cog ? 0.8 : 0.95)) else {
                throw ExtractError(.cancelled, "cancelled")
            }
        }
        switch plan.format {
        case .gtiff:
            try out.close()
        case .cog:
            try out.translate(
                to: tmp,
                arguments: ["-of", "COG", "-co", "COMPRESS=JPEG", "-co", "QUALITY=90", "-co", "BIGTIFF=IF_SAFER"]
            ).close()
            try out.close()
        case .jp2:
            try out.copy(
                to: tmp, driver: "JP2OpenJPEG",
                options: ["QUALITY=25", "REVERSIBLE=NO", "ALPHA=YES", "WRITE_METADATA=YES", "MAIN_MD_DOMAIN_ONLY=YES"]
            ).close()
        case .jpeg, .png:
            let ext = plan.format == .jpeg ? "jpg" : "png"
            let name = "\(plan.tileset)-extract"
            let image = work + "/\(name).\(ext)"
            try out.copy(
                to: image, driver: plan.format == .jpeg ? "JPEG" : "PNG",
                options: plan.format == .jpeg ? ["QUALITY=90", "WORLDFILE=YES"] : ["WORLDFILE=YES"]
            ).close()
            let world = work + "/\(name).\(plan.format == .jpeg ? "jgw" : "pgw")"
            if !FileManager.default.fileExists(atPath: world) {
                // Drivers name it .wld: keep the ESRI-style name users expect.
                try? FileManager.default.moveItem(atPath: work + "/\(name).wld", toPath: world)
            }
            try crs.wkt.write(toFile: work + "/\(name).prj", atomically: true, encoding: .utf8)
            var files = [
                ("\(name).\(ext)", image), ("\((world as NSString).lastPathComponent)", world),
                ("\(name).prj", work + "/\(name).prj"),
            ]
            if !plan.metadata.isEmpty {
                // What the image shows, for a DT-DICT answer to cite: KEY=value lines.
                let text = plan.metadata.map { "\($0.key)=\($0.value)\n" }.joined()
                try text.write(toFile: work + "/\(name).txt", atomically: true, encoding: .utf8)
                files.append(("\(name).txt", work + "/\(name).txt"))
            }
            try ZipArchive.write(tmp, files: files)
        }
        try commit()
        _ = progress(1)
    }
}

/// A pointer handed to concurrent workers that write disjoint parts of its memory.
struct UnsafeSendablePointer: @unchecked Sendable {
    let pointer: UnsafeMutablePointer<UInt8>
    init(_ pointer: UnsafeMutablePointer<UInt8>) { self.pointer = pointer }
}
