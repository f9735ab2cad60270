import Crypto
import Foundation

/// Credentials that sign requests. The secret key and the session token are never printed: not
/// in `description`, not in a dump, not in an error.
public struct S3Credentials: Sendable, Equatable, CustomStringConvertible, CustomDebugStringConvertible,
    CustomReflectable
{
    /// The access key id (public: it names the key, it is not the secret).
    public var accessKeyID: String
    /// The secret access key.
    public var secretAccessKey: String
    /// A session token of temporary credentials (STS), sent as `x-amz-security-token`.
    public var sessionToken: String?

    /// Credentials; `sessionToken` for temporary ones.
    public init(accessKeyID: String, secretAccessKey: String, sessionToken: String? = nil) {
        self.accessKeyID = accessKeyID
        self.secretAccessKey = secretAccessKey
        self.sessionToken = sessionToken
    }

    /// The access key id, and whether a session token comes with it.
    public var description: String {
        "access key \(accessKeyID) (secret hidden\(sessionToken == nil ? "" : ", with a session token"))"
    }
    /// As `description`: a debugger's print hides the secret too.
    public var debugDescription: String { description }
    /// The access key id only: `dump` and reflection hide the secret too.
    public var customMirror: Mirror { Mirror(self, children: ["accessKeyID": accessKeyID]) }
}

/// A request as AWS Signature Version 4 sees it, before signing. Everything is given decoded: the
/// signer percent-encodes the path (each segment once, `/` kept, as S3 wants) and the query.
public struct SigV4Request: Sendable, Equatable {
    /// `GET`, `PUT`…
    public var method: String
    /// The decoded path, starting with `/` (`/bucket/a key/ሴ`).
    public var path: String
    /// Decoded query parameters in any order; a parameter without value has `""`.
    public var query: [(name: String, value: String)]
    /// Headers to sign, in any order and case; repeated names are joined with commas. `host` must be
    /// among them.
    public var headers: [(name: String, value: String)]
    /// Lowercase hex SHA-256 of the body, or `UNSIGNED-PAYLOAD`.
    public var payloadHash: String

    /// A request to sign; see the properties for what each part holds.
    public init(
        method: String, path: String, query: [(name: String, value: String)] = [],
        headers: [(name: String, value: String)], payloadHash: String
    ) {
        self.method = method
        self.path = path
        self.query = query
        self.headers = headers
        self.payloadHash = payloadHash
    }

    /// Same method, path, payload hash, and parameters and headers in the same order.
    public static func == (a: SigV4Request, b: SigV4Request) -> Bool {
        a.method == b.method && a.path == b.path && a.payloadHash == b.payloadHash
            && a.query.elementsEqual(b.query, by: { $0 == $1 }) && a.headers.elementsEqual(b.headers, by: { $0 == $1 })
    }
}

/// What signing a request gives: the headers to add to it, and the intermediate strings that a
/// test checks against AWS's published ones.
public struct SigV4Signature: Sendable, Equatable {
    /// The `Authorization` header value.
    public var authorization: String
    /// Headers the signer added and signed (`x-amz-date`, `x-amz-security-token`): the request
    /// must carry them as they are.
    public var addedHeaders: [(name: String, value: String)]
    /// The canonical request (step 1 of SigV4).
    public var canonicalRequest: String
    /// The string to sign (step 2).
    public var stringToSign: String
    /// The hex signature (step 4).
    public var signature: String

    /// Same strings and added headers.
    public static func == (a: SigV4Signature, b: SigV4Signature) -> Bool {
        a.authorization == b.authorization && a.canonicalRequest == b.canonicalRequest
            && a.stringToSign == b.stringToSign && a.signature == b.signature
            && a.addedHeaders.elementsEqual(b.addedHeaders, by: { $0 == $1 })
    }
}

/// AWS Signature Version 4 with the signature in the `Authorization` header: pure, no I/O, no
/// clock (the caller passes the time), so that AWS's test vectors check it exactly.
public struct SigV4Signer: Sendable {
    /// The credentials that sign.
    public var credentials: S3Credentials
    /// The region of the credential scope (`us-east-1`).
    public var region: String
    /// The service of the credential scope (`s3`).
    public var service: String

    /// A signer for one credential scope.
    public init(credentials: S3Credentials, region: String, service: String = "s3") {
        self.credentials = credentials
        self.region = region
        self.service = service
    }

    /// The hash of an empty body.
    public static let emptyPayloadHash = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"

    /// Signs `request` at `date`: adds `x-amz-date` (and `x-amz-security-token` with a session
    /// token) to the signed headers unless present, and returns what to send.
    public func sign(_ request: SigV4Request, at date: Date) -> SigV4Signature {
        let (amzDate, day) = Self.timestamps(date)
        var headers = request.headers
        var added: [(name: String, value: String)] = []
        let present = Set(headers.map { $0.name.lowercased() })
        if !present.contains("x-amz-date") { added.append(("x-amz-date", amzDate)) }
        if let token = credentials.sessionToken, !present.contains("x-amz-security-token") {
            added.append(("x-amz-security-token", token))
        }
        headers += added

        let (canonicalHeaders, signedHeaders) = Self.canonicalHeaders(headers)
        let canonicalRequest = [
            request.method,
            Self.canonicalPath(request.path),
            Self.canonicalQuery(request.query),
            canonicalHeaders,
            signedHeaders,
            request.payloadHash,
        ].joined(separator: "\n")
        let scope = "\(day)/\(region)/\(service)/aws4_request"
        let stringToSign = [
            "AWS4-HMAC-SHA256", amzDate, scope, Self.hex(SHA256.hash(data: Data(canonicalRequest.utf8))),
        ].joined(separator: "\n")
        let signature = Self.hex(
            HMAC<SHA256>.authenticationCode(for: Data(stringToSign.utf8), using: signingKey(day: day)))
        let authorization =
            "AWS4-HMAC-SHA256 Credential=\(credentials.accessKeyID)/\(scope), SignedHeaders=\(signedHeaders), Signature=\(signature)"
        return SigV4Signature(
            authorization: authorization, addedHeaders: added, canonicalRequest: canonicalRequest,
            stringToSign: stringToSign, signature: signature)
    }

    /// The key derived from the secret for one day, region and service.
    func signingKey(day: String) -> SymmetricKey {
        var key = SymmetricKey(data: Data("AWS4\(credentials.secretAccessKey)".utf8))
        for part in [day, region, service, "aws4_request"] {
            key = SymmetricKey(data: HMAC<SHA256>.authenticationCode(for: Data(part.utf8), using: key))
        }
        return key
    }

    /// `20150830T123600Z` and `20150830` for a date, in UTC.
    static func timestamps(_ date: Date) -> (amzDate: String, day: String) {
        var time = time_t(date.timeIntervalSince1970.rounded(.down))
        var parts = tm()
        gmtime_r(&time, &parts)
        func two(_ v: Int32) -> String { v < 10 ? "0\(v)" : "\(v)" }
        let day = "\(parts.tm_year + 1900)\(two(parts.tm_mon + 1))\(two(parts.tm_mday))"
        return ("\(day)T\(two(parts.tm_hour))\(two(parts.tm_min))\(two(parts.tm_sec))Z", day)
    }

    /// Lowercased names sorted, values trimmed with inner runs of spaces collapsed, repeated names
    /// joined with commas in the order given; and the `;`-joined list of names.
    static func canonicalHeaders(_ headers: [(name: String, value: String)]) -> (lines: String, signed: String) {
        var values: [String: [String]] = [:]
        for (name, value) in headers {
            values[name.lowercased(), default: []].append(collapseSpaces(value))
        }
        let names = values.keys.sorted()
        let lines = names.map { "\($0):\(values[$0, default: []].joined(separator: ","))\n" }.joined()
        return (lines, names.joined(separator: ";"))
    }

    /// A header value trimmed, with each run of spaces and tabs made one space.
    static func collapseSpaces(_ value: String) -> String {
        value.split(whereSeparator: { $0 == " " || $0 == "\t" }).joined(separator: " ")
    }

    /// The path with each segment percent-encoded once (S3 neither normalizes nor double-encodes).
    static func canonicalPath(_ path: String) -> String {
        let encoded = path.split(separator: "/", omittingEmptySubsequences: false).map { uriEncode($0) }
            .joined(separator: "/")
        return encoded.isEmpty ? "/" : encoded
    }

    /// Parameters encoded, then sorted by name and value (bytewise), joined `a=1&b=2`.
    static func canonicalQuery(_ query: [(name: String, value: String)]) -> String {
        query.map { (uriEncode($0.name), uriEncode($0.value)) }
            // Encoded strings are ASCII, where String's order is byte order.
            .sorted { $0.0 != $1.0 ? $0.0 < $1.0 : $0.1 < $1.1 }
            .map { "\($0.0)=\($0.1)" }
            .joined(separator: "&")
    }

    /// Percent-encodes every byte but the unreserved `A–Z a–z 0–9 - . _ ~`, with uppercase hex:
    /// SigV4's `UriEncode`. Used for path segments and query names and values alike.
    public static func uriEncode(_ text: some StringProtocol) -> String {
        var out: [UInt8] = []
        out.reserveCapacity(text.utf8.count)
        let hexDigits = Array("0123456789ABCDEF".utf8)
        for byte in text.utf8 {
            switch byte {
            case UInt8(ascii: "A")...UInt8(ascii: "Z"), UInt8(ascii: "a")...UInt8(ascii: "z"),
                UInt8(ascii: "0")...UInt8(ascii: "9"), UInt8(ascii: "-"), UInt8(ascii: "."), UInt8(ascii: "_"),
                UInt8(ascii: "~"):
                out.append(byte)
            default:
                out += [UInt8(ascii: "%"), hexDigits[Int(byte >> 4)], hexDigits[Int(byte & 0xF)]]
            }
        }
        return String(decoding: out, as: UTF8.self)
    }

    /// Lowercase hex of a digest or a MAC.
    static func hex<D: Sequence>(_ bytes: D) -> String where D.Element == UInt8 {
        let digits = Array("0123456789abcdef".utf8)
        var out: [UInt8] = []
        for b in bytes { out += [digits[Int(b >> 4)], digits[Int(b & 0xF)]] }
        return String(decoding: out, as: UTF8.self)
    }

    /// Lowercase hex SHA-256 of some bytes: the payload hash of a body.
    public static func payloadHash(_ bytes: some DataProtocol) -> String {
        hex(SHA256.hash(data: bytes))
    }
}
