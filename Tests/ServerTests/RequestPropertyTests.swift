import Foundation
import HTTPTypes
import Hummingbird
import HummingbirdTesting
import PropertyBased
import Server
import Testing

@testable import Serving

#if canImport(FoundationXML)
    import FoundationXML
#endif

/// Generated hostile parameters through the router: WMS GetMap, WMTS GetTile, tile numbers and
/// the extract API answer with a result or a client error, never a 5xx and never a crash; every
/// OWS error report is well-formed XML (issue 11).
struct RequestPropertyTests {
    let store = ServerFixture.shared + "/store"

    // MARK: - Generators

    /// One of `items`, shrinking towards the first.
    static func one<T: Sendable>(of items: [T]) -> Generator<T, Shrink.Integer<Int>> {
        Gen<Int>.int(in: 0...(items.count - 1)).map { items[$0] }
    }

    /// Mostly one of `usual`, one time in four one of `odd`: a request with one odd value among
    /// usual ones gets past the first checks to the code behind them.
    static func mostly<T: Sendable>(_ usual: [T], else odd: [T]) -> Generator<T, some SendableSequenceType> {
        zip(Gen<Int>.int(in: 0...3), one(of: usual), one(of: odd)).map { k, u, o in k == 0 ? o : u }
    }

    /// Numbers a reader of untrusted text must survive, spelt as clients (and attackers) spell them.
    static let oddNumbers = [
        "0", "-0", "1", "-1", "0.5", "1e-300", "-1e-300", "NaN", "nan", "inf", "-inf", "Infinity", "+1", "1e3", "",
        " ", "abc", "0x10", "1,2", "--1", "1..2", "4e-324", "2.2250738585072014e-308",
    ]
    /// Numbers far outside any grid: the traps of items 1 and 14.
    static let hugeNumbers = [
        "1e30", "-1e30", "1e308", "-1e308", "1.7976931348623157e308", "99999999999999999999999", "-9.2e18", "9.3e18",
    ]
    /// Characters XML 1.0 cannot hold, even escaped: an echo of them must be dropped or replaced.
    static let controlCharacters = ["\u{0}", "\u{1}", "\u{8}", "\u{B}", "\u{1B}", "\u{1F}"]

    /// A coordinate: near the fixture's data (704000…704051.2 × 7059948.8…7060000 in
    /// Lambert-93), anywhere on a plausible grid, or an odd spelling.
    static func coordinate(huge: Bool) -> Generator<String, some SendableSequenceType> {
        zip(
            Gen<Int>.int(in: 0...3), Gen<Double>.double(in: 704_000...704_060), Gen<Double>.double(in: -2e7...2e7),
            one(of: oddNumbers + (huge ? hugeNumbers : []))
        ).map { kind, near, anywhere, odd in
            switch kind {
            case 0: String(near)
            case 1: String(anywhere)
            case 2: String(Int(anywhere))
            default: odd
            }
        }
    }

    /// BBOX values: four coordinates, a box of a random size around the data, or garbage.
    static func bbox(huge: Bool) -> Generator<String, some SendableSequenceType> {
        zip(
            Gen<Int>.int(in: 0...3), coordinate(huge: huge).array(of: 4), Gen<Double>.double(in: -3...7),
            one(of: ["", ",,,", "1,2,3", "1,2,3,4,5", "a,b,c,d", " 1, 2, 3, 4"])
        ).map { kind, numbers, exponent, garbage in
            switch kind {
            case 0: return numbers.joined(separator: ",")
            case 1, 2:
                let half = pow(10, exponent)
                return "\(704_025 - half),\(7_059_975 - half),\(704_025 + half),\(7_059_975 + half)"
            default: return garbage
            }
        }
    }

    /// Pixel sizes: small real ones (rendering costs), limits, and odd spellings.
    static var sizes: Generator<String, some SendableSequenceType> {
        mostly(
            ["1", "2", "16", "64"],
            else: [
                "0", "-1", "-0", "65", "4097", "99999999999999999999", "1e3", "64.0", "+64", " 64", "", "NaN", "0x40",
            ])
    }

    /// CRS names; the geographic ones only with `geographic` (out-of-range degrees: item 14).
    static func crsNames(geographic: Bool) -> Generator<String, some SendableSequenceType> {
        mostly(
            ["EPSG:2154", "EPSG:2154", "EPSG:3857", "EPSG:3949", "EPSG:3942", "epsg:2154"]
                + (geographic ? ["EPSG:4326", "CRS:84"] : []),
            else: ["EPSG:99999", "EPSG:", "", "<EPSG:2154>", "EPSG:2154&x"])
    }

    /// Values of a parameter echoed in error reports, with control characters or without.
    static func echoed(_ values: [String], control: Bool) -> Generator<String, some SendableSequenceType> {
        zip(
            mostly(Array(values.prefix(1)), else: values), mostly([""], else: control ? controlCharacters : [""]),
            Gen<Bool>.bool
        ).map {
            value, c, before in before ? c + value : value + c
        }
    }

    /// A GetMap query from its parameters, each percent-encoded.
    static func getMap(_ parameters: [(String, String)]) -> String {
        "/wms?"
            + parameters.map { k, v in
                "\(k)=\(v.addingPercentEncoding(withAllowedCharacters: .alphanumerics) ?? "")"
            }.joined(separator: "&")
    }

    static func wmsQuery(huge: Bool, control: Bool) -> Generator<String, some SendableSequenceType> {
        zip(
            bbox(huge: huge), sizes, sizes,
            echoed(["EPSG:2154", "EPSG:3857", "EPSG:3949"] + (huge ? ["EPSG:4326"] : []), control: control),
            crsNames(geographic: huge),
            echoed(["pcrs", "nope", "pcrs,pcrs", "", "pcrs,", "<a>&\"'"], control: control),
            echoed(["image/png", "image/jpeg", "image/webp", "image/gif", "", "<&>"], control: control),
            mostly([""], else: ["default", "x", ",", "default,default"]), Gen<Bool>.bool,
            mostly(["1.3.0"], else: ["1.1.1", ""])
        ).map { bbox, width, height, echoedCRS, crs, layers, format, styles, useEchoedCRS, version in
            getMap([
                ("SERVICE", "WMS"), ("VERSION", version), ("REQUEST", "GetMap"), ("LAYERS", layers),
                ("STYLES", styles), ("CRS", useEchoedCRS ? echoedCRS : crs), ("BBOX", bbox), ("WIDTH", width),
                ("HEIGHT", height), ("FORMAT", format), ("TRANSPARENT", "TRUE"),
            ])
        }
    }

    // MARK: - Checks

    /// Parses `body` as XML; nil when it parses, else the parser's error.
    static func xmlError(_ body: ByteBuffer) -> String? {
        let parser = XMLParser(data: Data(buffer: body))
        return parser.parse() ? nil : "\(parser.parserError.map { "\($0)" } ?? "unknown error")"
    }

    /// An OWS answer: an image, or a client error whose report is XML.
    static func checkOWSAnswer(_ uri: String, _ r: TestResponse) {
        let status = r.status.code
        #expect(status == 200 || status == 304 || (400..<500).contains(status), "\(status) for \(uri)")
        if status == 200 {
            #expect(r.headers[.contentType]?.hasPrefix("image/") == true, "\(uri)")
        } else if status >= 400 {
            #expect(xmlError(r.body) == nil, "\(uri): \(String(buffer: r.body).debugDescription)")
        }
    }

    func app() throws -> some ApplicationProtocol {
        try ServerFixture.app(store: store) { c in
            // Bounded renders and extracts: the properties are about answers, not sizes.
            c.wmsMaxSize = 64
            c.extractLimits.directPixels = 1_000_000
            c.extractLimits.maxPixels = 1_000_000
            c.extractLimits.maxInMemoryPixels = 1_000_000
        }
    }

    // MARK: - WMS

    @Test func wmsGetMapAnswersOrdinaryHostileParametersWithAnImageOrAnXMLReport() async throws {
        try await app().test(.router) { client in
            await propertyCheck(count: 100, input: Self.wmsQuery(huge: false, control: false)) { uri in
                try await client.execute(uri: uri, method: .get) { Self.checkOWSAnswer(uri, $0) }
            }
        }
    }

    @Test
    func wmsGetMapAnswersAnyParametersWithAnImageOrAnXMLReport() async throws {
        try await app().test(.router) { client in
            await propertyCheck(count: 200, input: Self.wmsQuery(huge: true, control: true)) { uri in
                try await client.execute(uri: uri, method: .get) { Self.checkOWSAnswer(uri, $0) }
            }
        }
    }

    // MARK: - WMTS and tile numbers

    /// A tile number of the fixture's inner z22 tile or a neighbour, spelt in many ways.
    static func tileNumber(_ n: Int, control: Bool, near: ClosedRange<Int> = -2...2) -> Generator<
        String, some SendableSequenceType
    > {
        zip(Gen<Int>.int(in: 0...9), Gen<Int>.int(in: near), one(of: oddNumbers + hugeNumbers)).map {
            spelling, offset, odd in
            let v = n + offset
            return switch spelling {
            case 0: "0\(v)"
            case 1: "+\(v)"
            case 2: "-\(v)"
            case 3: " \(v)"
            case 4: control ? "\(v)\u{0}" : "\(v)x"
            case 5: odd
            default: "\(v)"
            }
        }
    }

    static func tileNumbers(control: Bool, near: ClosedRange<Int> = -2...2) -> Generator<
        (String, String, String, String), some SendableSequenceType
    > {
        zip(
            tileNumber(22, control: control, near: 0...0),
            tileNumber(ServerFixture.innerTile.col, control: control, near: near),
            tileNumber(ServerFixture.innerTile.row, control: control, near: near),
            one(of: ["jpg", "png", "webp", "JPG", "gif", ""])
        )
    }

    /// True when `s` is the one spelling of a tile number.
    static func isCanonical(_ s: String) -> Bool { Int(s).map { String($0) == s && $0 >= 0 } ?? false }

    static func encoded(_ s: String) -> String { s.addingPercentEncoding(withAllowedCharacters: .alphanumerics) ?? "" }

    @Test func tileNumbersNeverGiveAServerError() async throws {
        try await checkTileNumbers(control: false)
    }

    @Test
    func tileNumbersWithControlCharactersGiveWellFormedReports() async throws {
        try await checkTileNumbers(control: true)
    }

    /// Tile numbers in XYZ, WMTS REST and WMTS KVP: never a 5xx; OWS reports are XML.
    func checkTileNumbers(control: Bool) async throws {
        try await app().test(.router) { client in
            await propertyCheck(count: 120, input: Self.tileNumbers(control: control), Gen<Int>.int(in: 0...2)) {
                numbers, route in
                let (z, col, row, ext) = numbers
                let uri =
                    switch route {
                    case 0: "/tiles/pcrs/2154_5cm/\(Self.encoded(z))/\(Self.encoded(col))/\(Self.encoded(row)).\(ext)"
                    case 1:
                        "/wmts/1.0.0/pcrs/normal/2154_5cm/\(Self.encoded(z))/\(Self.encoded(row))/\(Self.encoded(col)).\(ext)"
                    default:
                        "/wmts?SERVICE=WMTS&REQUEST=GetTile&VERSION=1.0.0&LAYER=pcrs&STYLE=normal&TILEMATRIXSET=2154_5cm"
                            + "&FORMAT=image/png&TILEMATRIX=\(Self.encoded(z))&TILEROW=\(Self.encoded(row))"
                            + "&TILECOL=\(Self.encoded(col))"
                    }
                try await client.execute(uri: uri, method: .get) { r in
                    #expect(r.status.code < 500, "\(r.status) for \(uri)")
                    if route > 0, r.status.code >= 400, r.status != .notFound {
                        #expect(Self.xmlError(r.body) == nil, "\(uri): \(String(buffer: r.body).debugDescription)")
                    }
                }
            }
        }
    }

    @Test
    func onlyTheCanonicalSpellingOfATileIsServed() async throws {
        try await app().test(.router) { client in
            await propertyCheck(count: 200, input: Self.tileNumbers(control: false, near: 0...0)) { z, col, row, _ in
                let uri = "/tiles/pcrs/2154_5cm/\(Self.encoded(z))/\(Self.encoded(col))/\(Self.encoded(row)).jpg"
                try await client.execute(uri: uri, method: .get) { r in
                    if r.status == .ok {
                        #expect([z, col, row].allSatisfy(Self.isCanonical), "served \(uri)")
                    }
                }
            }
        }
    }

    // MARK: - Extracts

    /// JSON numbers a decoder and a planner must survive (1e400 is valid JSON, not a Double).
    static let jsonNumbers = [
        "0", "-0", "1", "-1", "0.05", "0.2", "10", "1000", "1001", "1e-5", "1e300", "-1e300", "1e400",
        "99999999999999999999999", "null", "\"1\"", "true", "[]", "{}",
    ]

    /// A polygon in Lambert-93 around the data, moved, scaled, or given odd coordinates.
    static func polygon(huge: Bool) -> Generator<String, some SendableSequenceType> {
        zip(
            Gen<Int>.int(in: 0...3), Gen<Double>.double(in: -2...6), one(of: jsonNumbers + (huge ? ["1e300"] : [])),
            mostly(["EPSG:2154"], else: ["EPSG:4326", "EPSG:3949", "EPSG:99999", "", "x"])
        ).map { kind, exponent, odd, crs in
            let half = pow(10, exponent)
            let (x0, y0, x1, y1) = (704_025 - half, 7_059_975 - half, 704_025 + half, 7_059_975 + half)
            let ring: String
            switch kind {
            case 0: ring = "[[\(x0),\(y0)],[\(x1),\(y0)],[\(x1),\(y1)],[\(x0),\(y1)],[\(x0),\(y0)]]"
            case 1: ring = "[[\(x0),\(y0)],[\(x1),\(y1)],[\(x1),\(y0)],[\(x0),\(y1)],[\(x0),\(y0)]]"  // a bow-tie
            case 2: ring = "[[\(x0),\(y0)],[\(odd),\(y0)],[\(x1),\(odd)],[\(x0),\(y0)]]"
            default: ring = "[[\(odd),\(odd)]]"
            }
            return #"{"type":"Polygon","crs":{"type":"name","properties":{"name":"\#(crs)"}},"coordinates":[\#(ring)]}"#
        }
    }

    static func extractBody(huge: Bool) -> Generator<String, some SendableSequenceType> {
        zip(
            polygon(huge: huge),
            // With `huge`, mostly the resolutions whose pixel counts overflow Int (item 2).
            huge
                ? mostly(["1e-300", "1e-20", "5e-324"], else: jsonNumbers)
                : mostly(["0.2", "1", "null"], else: jsonNumbers),
            mostly(["0", "5"], else: jsonNumbers),
            mostly(
                [#""EPSG:2154""#, #""EPSG:3949""#, "null"], else: [#""EPSG:4326""#, #""EPSG:3857""#, #""x""#, "7"]),
            mostly([#""gtiff""#, #""cog""#, #""png""#, "null"], else: [#""jpeg""#, #""bmp""#, "3"]),
            mostly([#""pcrs""#], else: [#""nope""#, "null", #""""#])
        ).map { geometry, resolution, buffer, crs, format, tileset in
            #"{"tileset":\#(tileset),"geometry":\#(geometry),"resolution":\#(resolution),"buffer_m":\#(buffer),"crs":\#(crs),"format":\#(format)}"#
        }
    }

    static func checkExtractAnswer(_ body: String, _ r: TestResponse) {
        let status = r.status.code
        #expect(status == 200 || status == 202 || (400..<500).contains(status), "\(status) for \(body)")
        if status >= 400 {
            let json = try? JSONSerialization.jsonObject(with: Data(buffer: r.body))
            #expect(json is [String: Any], "\(body): \(String(buffer: r.body))")
        }
    }

    @Test func extractRequestsAnswerWithAResultOrAClientError() async throws {
        try await app().test(.router) { client in
            await propertyCheck(count: 80, input: Self.extractBody(huge: false)) { body in
                try await client.execute(uri: "/api/extracts", method: .post, body: ByteBuffer(string: body)) {
                    Self.checkExtractAnswer(body, $0)
                }
            }
        }
    }

    @Test
    func extractRequestsWithAnyNumbersAnswerWithAResultOrAClientError() async throws {
        try await app().test(.router) { client in
            await propertyCheck(count: 120, input: Self.extractBody(huge: true)) { body in
                try await client.execute(uri: "/api/extracts", method: .post, body: ByteBuffer(string: body)) {
                    Self.checkExtractAnswer(body, $0)
                }
            }
        }
    }
}
