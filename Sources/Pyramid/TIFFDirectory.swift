/// A TIFF field value, typed as the TIFF 6.0 / BigTIFF field types we write.
enum TIFFValue {
    case ascii(String)
    case shorts([UInt16])
    case longs([UInt32])
    case long8s([UInt64])
    case doubles([Double])

    var type: UInt16 {
        switch self {
        case .ascii: 2
        case .shorts: 3
        case .longs: 4
        case .doubles: 12
        case .long8s: 16
        }
    }

    var count: Int {
        switch self {
        case .ascii(let s): s.utf8.count + 1
        case .shorts(let v): v.count
        case .longs(let v): v.count
        case .long8s(let v): v.count
        case .doubles(let v): v.count
        }
    }

    var byteCount: Int {
        switch self {
        case .ascii(let s): s.utf8.count + 1
        case .shorts(let v): v.count * 2
        case .longs(let v): v.count * 4
        case .long8s(let v): v.count * 8
        case .doubles(let v): v.count * 8
        }
    }

    func append(to out: inout [UInt8]) {
        switch self {
        case .ascii(let s):
            out += Array(s.utf8)
            out.append(0)
        case .shorts(let v): for x in v { out.appendLE(x) }
        case .longs(let v): for x in v { out.appendLE(x) }
        case .long8s(let v): for x in v { out.appendLE(x) }
        case .doubles(let v): for x in v { out.appendLE(x.bitPattern) }
        }
    }
}

/// TIFF tag numbers used by shards.
enum TIFFTag {
    static let newSubfileType: UInt16 = 254
    static let imageWidth: UInt16 = 256
    static let imageLength: UInt16 = 257
    static let bitsPerSample: UInt16 = 258
    static let compression: UInt16 = 259
    static let photometric: UInt16 = 262
    static let samplesPerPixel: UInt16 = 277
    static let planarConfiguration: UInt16 = 284
    static let tileWidth: UInt16 = 322
    static let tileLength: UInt16 = 323
    static let tileOffsets: UInt16 = 324
    static let tileByteCounts: UInt16 = 325
    static let extraSamples: UInt16 = 338
    static let sampleFormat: UInt16 = 339
    static let ycbcrSubSampling: UInt16 = 530
    static let modelPixelScale: UInt16 = 33550
    static let modelTiepoint: UInt16 = 33922
    static let geoKeyDirectory: UInt16 = 34735
    /// GDAL's own metadata items, as XML (`<GDALMetadata><Item name="K">V</Item></GDALMetadata>`).
    static let gdalMetadata: UInt16 = 42112
}

/// One image file directory being laid out: its fields, sorted by tag when written.
struct TIFFDirectory {
    var fields: [(tag: UInt16, value: TIFFValue)] = []

    mutating func set(_ tag: UInt16, _ value: TIFFValue) {
        fields.removeAll { $0.tag == tag }
        fields.append((tag, value))
    }

    /// Bytes taken by the directory and the values that do not fit inline.
    func size(bigTIFF: Bool) -> Int {
        let entry = bigTIFF ? 20 : 12
        let inline = bigTIFF ? 8 : 4
        var n = (bigTIFF ? 8 : 2) + fields.count * entry + (bigTIFF ? 8 : 4)
        for f in fields where f.value.byteCount > inline { n += (f.value.byteCount + 1) & ~1 }
        return n
    }

    /// Serialises the directory placed at `offset`, its out-of-line values right after it.
    func serialise(at offset: Int, next: Int, bigTIFF: Bool) -> [UInt8] {
        let sorted = fields.sorted { $0.tag < $1.tag }
        let entry = bigTIFF ? 20 : 12
        let inline = bigTIFF ? 8 : 4
        var out: [UInt8] = []
        var extra: [UInt8] = []
        var extraOffset = offset + (bigTIFF ? 8 : 2) + sorted.count * entry + (bigTIFF ? 8 : 4)
        if bigTIFF { out.appendLE(UInt64(sorted.count)) } else { out.appendLE(UInt16(sorted.count)) }
        for f in sorted {
            out.appendLE(f.tag)
            out.appendLE(f.value.type)
            if bigTIFF { out.appendLE(UInt64(f.value.count)) } else { out.appendLE(UInt32(f.value.count)) }
            if f.value.byteCount <= inline {
                var v: [UInt8] = []
                f.value.append(to: &v)
                v += [UInt8](repeating: 0, count: inline - v.count)
                out += v
            } else {
                if bigTIFF { out.appendLE(UInt64(extraOffset)) } else { out.appendLE(UInt32(extraOffset)) }
                let start = extra.count
                f.value.append(to: &extra)
                if (extra.count - start) & 1 == 1 { extra.append(0) }
                extraOffset += extra.count - start
            }
        }
        if bigTIFF { out.appendLE(UInt64(next)) } else { out.appendLE(UInt32(next)) }
        return out + extra
    }
}

extension [UInt8] {
    mutating func appendLE<T: FixedWidthInteger>(_ v: T) {
        Swift.withUnsafeBytes(of: v.littleEndian) { append(contentsOf: $0) }
    }
}
