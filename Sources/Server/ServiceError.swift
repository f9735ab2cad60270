import Coverage
import Foundation
import Hummingbird

/// Every error a request can meet, with what the client needs to fix it. This file alone decides
/// statuses and bodies: OWS `ExceptionReport` on OGC routes, `{"error", "detail"}` on JSON routes.
public struct ServiceError: Error, Sendable {
    /// OGC exception codes (OWS Common 1.1 / WMTS 1.0 §8), also used to pick the HTTP status.
    public enum Code: String, Sendable {
        case missingParameterValue = "MissingParameterValue"
        case invalidParameterValue = "InvalidParameterValue"
        case operationNotSupported = "OperationNotSupported"
        case tileOutOfRange = "TileOutOfRange"
        case notFound = "NotFound"
        case noApplicableCode = "NoApplicableCode"
        // JSON API only.
        case unauthorized = "Unauthorized"
        case forbidden = "Forbidden"
        case conflict = "Conflict"
        case validationFailed = "ValidationFailed"
        case payloadTooLarge = "TooLarge"
        case tooManyRequests = "TooManyRequests"
        case methodNotAllowed = "MethodNotAllowed"
        /// A request head or body that did not arrive in time (408).
        case requestTimeout = "RequestTimeout"
        /// The server cannot take the request now: database gone or read-only, too many
        /// connections (503, with a reason).
        case unavailable = "Unavailable"
        /// No space left to write the result (507).
        case insufficientStorage = "InsufficientStorage"
    }

    /// How the client asked, so the error answers in the same language.
    public enum Style: Sendable {
        case ows
        case json
    }

    public var code: Code
    public var locator: String?
    public var message: String
    public var style: Style

    public init(_ code: Code, locator: String? = nil, _ message: String, style: Style = .ows) {
        self.code = code
        self.locator = locator
        self.message = message
        self.style = style
    }

    /// The same error answered as JSON.
    public func json() -> ServiceError {
        var e = self
        e.style = .json
        return e
    }

    public var status: HTTPResponse.Status {
        switch code {
        case .missingParameterValue, .invalidParameterValue, .tileOutOfRange: .badRequest
        case .operationNotSupported: .notImplemented
        case .notFound: .notFound
        case .noApplicableCode: .internalServerError
        case .unauthorized: .unauthorized
        case .forbidden: .forbidden
        case .conflict: .conflict
        case .validationFailed: .unprocessableContent
        case .payloadTooLarge: .contentTooLarge
        case .tooManyRequests: .tooManyRequests
        case .methodNotAllowed: .methodNotAllowed
        case .requestTimeout: .requestTimeout
        case .unavailable: .serviceUnavailable
        case .insufficientStorage: .init(code: 507, reasonPhrase: "Insufficient Storage")
        }
    }
}

extension ServiceError {
    /// A coverage rule error answered as JSON, with the same status on every route group.
    public init(_ e: CoverageError) {
        let code: Code =
            switch e.kind {
            case .invalid: .validationFailed
            case .malformed: .invalidParameterValue
            case .notFound: .notFound
            case .conflict: .conflict
            case .unauthorized: .unauthorized
            case .forbidden: .forbidden
            case .unavailable: .unavailable
            }
        self.init(code, e.message, style: .json)
    }
}

extension ServiceError: HTTPResponseError {
    public func response(from request: Request, context: some RequestContext) throws -> Response {
        var headers = HTTPFields()
        let body: String
        switch style {
        case .ows:
            headers[.contentType] = "application/xml; charset=utf-8"
            let locatorAttribute = locator.map { " locator=\"\(XML.escape(Echo.shortened($0, to: 64)))\"" } ?? ""
            body = """
                <?xml version="1.0" encoding="UTF-8"?>
                <ExceptionReport xmlns="http://www.opengis.net/ows/1.1" version="1.1.0" xml:lang="en">
                  <Exception exceptionCode="\(code.rawValue)"\(locatorAttribute)>
                    <ExceptionText>\(XML.escape(Echo.shortened(message)))</ExceptionText>
                  </Exception>
                </ExceptionReport>

                """
        case .json:
            headers[.contentType] = "application/json"
            var object: [String: String] = ["error": code.rawValue, "detail": Echo.shortened(message)]
            if let locator { object["parameter"] = locator }
            let data = (try? JSONSerialization.data(withJSONObject: object, options: [.sortedKeys])) ?? Data()
            body = String(decoding: data, as: UTF8.self)
        }
        headers[.cacheControl] = "no-store"
        if code == .tooManyRequests { headers[.retryAfter] = "60" }
        if code == .unavailable { headers[.retryAfter] = "5" }
        if code == .methodNotAllowed { headers[.allow] = "GET, HEAD, OPTIONS" }
        return Response(status: status, headers: headers, body: .init(byteBuffer: ByteBuffer(string: body)))
    }
}

/// XML text helpers.
enum XML {
    /// `s` as XML character data or attribute text. Characters XML 1.0 cannot carry at all (C0
    /// controls other than tab, line feed and carriage return; U+FFFE, U+FFFF) become U+FFFD, so
    /// a document echoing a request's bytes always parses.
    static func escape(_ s: String) -> String {
        var out = ""
        out.reserveCapacity(s.utf8.count)
        for c in s.unicodeScalars {
            switch c {
            case "&": out += "&amp;"
            case "<": out += "&lt;"
            case ">": out += "&gt;"
            case "\"": out += "&quot;"
            case "'": out += "&apos;"
            case "\t", "\n", "\r": out.unicodeScalars.append(c)
            case _ where c.value < 0x20 || c.value == 0xFFFE || c.value == 0xFFFF: out += "\u{FFFD}"
            default: out.unicodeScalars.append(c)
            }
        }
        return out
    }
}

/// Request text quoted back in an error message, kept short: an error names what was wrong, it
/// does not return a 70 kB parameter whole.
enum Echo {
    /// The longest message an error carries, in characters; longer ones end with "…".
    static let maxMessage = 512

    static func shortened(_ s: String, to limit: Int = maxMessage) -> String {
        s.count <= limit ? s : String(s.prefix(limit - 1)) + "…"
    }
}
