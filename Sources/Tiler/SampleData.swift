import Foundation
import GeoGrid
import Raster

/// Deterministic, realistic-looking orthophoto dalles for tests, the demo and the benchmarks:
/// fields and lawns, tree crowns, a street network with markings, houses with shaded roofs and
/// shadows, and fine ground texture. Everything is a function of ground coordinates, so
/// neighbouring dalles join without seams, and the imagery compresses about like real aerial
/// photos (never flat colour).
public struct SampleData: Sendable {
    public enum Format: String, Sendable, CaseIterable {
        case gtiff, jp2
    }

    public var columns = 4
    public var rows = 4
    /// Ground size of one dalle, in CRS units (metres).
    public var dalleSize = 200.0
    public var resolution = 0.05
    public var crs = "EPSG:2154"
    public var format = Format.gtiff
    /// Top-left corner of the first dalle; by default near Lille, snapped to the dalle size.
    public var origin: (x: Double, y: Double)? = nil
    public var year = 2024

    public init() {}

    /// 2×2 dalles of 25.6 m (512 px at 5 cm) at Lille: the smallest area with every level
    /// (tests and the fuzz harness).
    public static var small: SampleData {
        var s = SampleData()
        s.columns = 2
        s.rows = 2
        s.dalleSize = 25.6
        s.origin = (704_000, 7_060_000)
        return s
    }

    /// The default top-left corner: Lille in Lambert-93, converted for other CRSs.
    public func resolvedOrigin() throws -> (x: Double, y: Double) {
        if let origin { return origin }
        var x = [704_000.0]
        var y = [7_060_000.0]
        let target = try SpatialReference(crs)
        let l93 = try SpatialReference(epsg: 2154)
        if !target.isSame(as: l93) { try CoordinateTransform(from: l93, to: target).transform(x: &x, y: &y) }
        return ((x[0] / dalleSize).rounded(.down) * dalleSize, (y[0] / dalleSize).rounded(.down) * dalleSize)
    }

    /// IGN-style name: year, xmin and ymax in hectometres, CRS, resolution, bands.
    public func name(x: Double, y: Double, epsg: Int?) -> String {
        let crsLabel: String =
            switch epsg {
            case 2154: "LA93"
            case let c? where (3942...3950).contains(c): "CC\(c - 3900)"
            case let c?: "EPSG\(c)"
            default: "XXXX"
            }
        let cm = Int((resolution * 100).rounded())
        let res = "\(cm / 100)M" + String(format: "%02d", cm % 100)
        let ext = format == .gtiff ? "tif" : "jp2"
        // Hectometres like IGN when the dalle size allows it, metres otherwise (small test dalles).
        let hm = dalleSize.truncatingRemainder(dividingBy: 100) == 0
        let corner =
            hm
            ? String(format: "%05d-%05d", Int((x / 100).rounded()), Int((y / 100).rounded()))
            : String(format: "%07d-%08d", Int(x.rounded()), Int(y.rounded()))
        return "\(year)-\(corner)-\(crsLabel)-\(res)-RVB.\(ext)"
    }

    /// Writes the dalles into `directory` in parallel and returns their paths.
    public func write(to directory: String, threads: Int = ProcessInfo.processInfo.activeProcessorCount) throws
        -> [String]
    {
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        let (ox, oy) = try resolvedOrigin()
        let srs = try SpatialReference(crs)
        let wkt = srs.wkt
        let epsg = srs.epsg
        let pixels = Int((dalleSize / resolution).rounded())
        let jobs = (0..<(rows * columns)).map { ($0 % columns, $0 / columns) }
        let results = ResultSlots<Result<String, Error>>(count: jobs.count)
        let counter = Counter()
        let me = self
        DispatchQueue.concurrentPerform(iterations: max(1, min(threads, jobs.count))) { _ in
            while true {
                let i = counter.next()
                if i >= jobs.count { break }
                let (c, r) = jobs[i]
                let x0 = ox + Double(c) * me.dalleSize
                let y0 = oy - Double(r) * me.dalleSize
                let path = (directory as NSString).appendingPathComponent(me.name(x: x0, y: y0, epsg: epsg))
                results.set(
                    i,
                    Result {
                        try me.writeDalle(path: path, x0: x0, y0: y0, pixels: pixels, wkt: wkt)
                        return path
                    })
            }
        }
        return try results.values.map { try $0.get() }
    }

    private func writeDalle(path: String, x0: Double, y0: Double, pixels: Int, wkt: String) throws {
        let mem = try Dataset.memory(width: pixels, height: pixels, bands: 3)
        mem.geoTransform = GeoTransform(originX: x0, originY: y0, resolution: resolution)
        mem.projectionWKT = wkt
        let rowsPerStrip = 256
        let buffer = UnsafeMutablePointer<UInt8>.allocate(capacity: pixels * rowsPerStrip * 3)
        defer { buffer.deallocate() }
        var y = 0
        while y < pixels {
            let h = min(rowsPerStrip, pixels - y)
            Scene.render(
                into: buffer, width: pixels, rows: y..<(y + h), x0: x0, y0: y0, resolution: resolution)
            try mem.write(x: 0, y: y, width: pixels, height: h, bands: [1, 2, 3], from: buffer)
            y += h
        }
        let temporary = (path as NSString).deletingLastPathComponent + "/." + (path as NSString).lastPathComponent
        let args: [String] =
            switch format {
            case .gtiff:
                [
                    "-of", "GTiff", "-co", "COMPRESS=JPEG", "-co", "PHOTOMETRIC=YCBCR", "-co", "JPEG_QUALITY=90",
                    "-co", "TILED=YES", "-co", "BLOCKXSIZE=256", "-co", "BLOCKYSIZE=256",
                ]
            case .jp2:
                [
                    "-of", "JP2OpenJPEG", "-co", "QUALITY=25", "-co", "REVERSIBLE=NO", "-co", "BLOCKXSIZE=1024", "-co",
                    "BLOCKYSIZE=1024",
                ]
            }
        let out = try mem.translate(to: temporary, arguments: args)
        try out.close()
        guard rename(temporary, path) == 0 else { throw RasterError("cannot rename \(temporary)") }
    }
}

/// The procedural landscape: a pure function of ground coordinates.
enum Scene {
    @inline(__always)
    static func hash(_ a: Int, _ b: Int, _ seed: UInt64 = 0) -> UInt64 {
        var h =
            UInt64(bitPattern: Int64(a)) &* 0x9E37_79B9_7F4A_7C15 ^ UInt64(bitPattern: Int64(b))
            &* 0xC2B2_AE3D_27D4_EB4F
        h ^= seed &* 0x1656_67B1_9E37_79F9
        h ^= h >> 31
        h = h &* 0xD6E8_FEB8_6659_FD93
        h ^= h >> 32
        return h
    }

    /// Smooth value noise in [0, 1] with a lattice of `cell` metres.
    @inline(__always)
    static func noise(_ x: Double, _ y: Double, cell: Double, seed: UInt64) -> Double {
        let gx = x / cell
        let gy = y / cell
        let ix = Int(gx.rounded(.down))
        let iy = Int(gy.rounded(.down))
        let fx = gx - Double(ix)
        let fy = gy - Double(iy)
        let sx = fx * fx * (3 - 2 * fx)
        let sy = fy * fy * (3 - 2 * fy)
        func v(_ a: Int, _ b: Int) -> Double { Double(hash(a, b, seed) & 0xFFFF) / 65535 }
        let top = v(ix, iy) + (v(ix + 1, iy) - v(ix, iy)) * sx
        let bottom = v(ix, iy + 1) + (v(ix + 1, iy + 1) - v(ix, iy + 1)) * sx
        return top + (bottom - top) * sy
    }

    /// Street spacing and width (metres).
    static let block = 160.0
    static let roadHalfWidth = 4.5

    /// Distance from `v` to the nearest street axis along one axis (streets wobble per block).
    @inline(__always)
    static func roadDistance(_ v: Double, axis: UInt64) -> Double {
        let k = Int((v / block).rounded(.down))
        var best = Double.infinity
        for j in (k - 1)...(k + 1) {
            let offset = Double(hash(j, 7, axis) % 40) - 20
            best = min(best, abs(v - (Double(j) * block + offset)))
        }
        return best
    }

    static func render(
        into out: UnsafeMutablePointer<UInt8>, width: Int, rows: Range<Int>, x0: Double, y0: Double, resolution: Double
    ) {
        // Per-column quantities (depend on x only).
        var colRoad = [Double](repeating: 0, count: width)
        var colX = [Double](repeating: 0, count: width)
        for c in 0..<width {
            let x = x0 + (Double(c) + 0.5) * resolution
            colX[c] = x
            colRoad[c] = roadDistance(x, axis: 1)
        }
        let parcelW = 22.0
        let parcelH = 18.0
        for (i, r) in rows.enumerated() {
            let y = y0 - (Double(r) + 0.5) * resolution
            let rowRoad = roadDistance(y, axis: 2)
            let line = out + i * width * 3
            let py = Int((y / parcelH).rounded(.down))
            let fy = y / parcelH - Double(py)
            for c in 0..<width {
                let x = colX[c]
                let grain = Double(hash(Int(x * 50), Int(y * 50), 3) & 0x0F) - 8
                var rgb: (Double, Double, Double)
                let dRoad = min(colRoad[c], rowRoad)
                if dRoad < roadHalfWidth {
                    // Asphalt, with a dashed centre line and kerbs.
                    let wear = noise(x, y, cell: 3, seed: 11) * 30
                    rgb = (88 + wear, 90 + wear, 94 + wear)
                    let along = colRoad[c] < rowRoad ? y : x
                    if dRoad < 0.08 && Int((along / 3).rounded(.down)) % 2 == 0 { rgb = (228, 228, 222) }
                    if dRoad > roadHalfWidth - 0.35 { rgb = (170, 168, 160) }
                } else if dRoad < roadHalfWidth + 2 {
                    // Pavement.
                    let tile = Double(hash(Int(x * 3), Int(y * 3), 5) & 0x0F)
                    rgb = (176 + tile, 170 + tile, 160 + tile)
                } else {
                    let px = Int((x / parcelW).rounded(.down))
                    let fx = x / parcelW - Double(px)
                    let h = hash(px, py, 9)
                    let built = h % 10 < 6 && dRoad > roadHalfWidth + 5
                    let mx = 0.12 + Double(h >> 8 & 0xF) / 100
                    let my = 0.14 + Double(h >> 12 & 0xF) / 100
                    let veg = noise(x, y, cell: 14, seed: 21) * 0.7 + noise(x, y, cell: 4, seed: 22) * 0.3
                    if built && fx > mx && fx < 1 - mx && fy > my && fy < 1 - my {
                        // A roof: tiles or slate, ridge along the longer side, one pan brighter.
                        let red = h >> 20 & 1 == 0
                        let ridge = fy < 0.5 ? 1.0 : 0.78
                        let lines = (Int(y * 4) & 1 == 0) ? 0.95 : 1.0
                        let base: (Double, Double, Double) = red ? (168, 82, 58) : (92, 96, 104)
                        let k = ridge * lines
                        rgb = (base.0 * k, base.1 * k, base.2 * k)
                    } else if built && fx > mx && fx < 1 - mx + 0.05 && fy >= 1 - my && fy < 1 - my + 0.06 {
                        rgb = (52, 58, 48)  // cast shadow
                    } else if veg > 0.62 {
                        // Tree crowns: dark, clumpy.
                        let leaf = noise(x, y, cell: 0.9, seed: 23) * 40
                        rgb = (38 + leaf * 0.6, 72 + leaf, 34 + leaf * 0.5)
                    } else {
                        // Lawn, field or bare soil, slowly varying.
                        let field = noise(x, y, cell: 60, seed: 24)
                        let soil = noise(x, y, cell: 6, seed: 25) * 25
                        rgb =
                            field > 0.55
                            ? (92 + soil, 128 + soil, 62 + soil * 0.5)
                            : (142 + soil, 128 + soil, 96 + soil * 0.6)
                    }
                }
                let o = c * 3
                line[o] = UInt8(max(0, min(255, rgb.0 + grain)))
                line[o + 1] = UInt8(max(0, min(255, rgb.1 + grain)))
                line[o + 2] = UInt8(max(0, min(255, rgb.2 + grain)))
            }
        }
    }
}
