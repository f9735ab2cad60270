import Coverage
import Foundation
import HTTPTypes
import Hummingbird
import NIOCore
import Serving

/// The one place where errors become HTTP: a kind gives the status, the route group gives the
/// language of the body — an OWS `ExceptionReport` under `/wmts`, a WMS `ServiceExceptionReport`
/// under `/wms`, `{"error", "detail"}` everywhere else.
enum ErrorStyle: Sendable, CaseIterable {
    case ows
    case wms
    case json

    /// The style of the route group a path belongs to.
    init(path: String) {
        if path == "/wms" || path.hasPrefix("/wms/") || path.hasPrefix("/wms?") {
            self = .wms
        } else if path == "/wmts" || path.hasPrefix("/wmts/") || path.hasPrefix("/wmts?") {
            self = .ows
        } else {
            self = .json
        }
    }
}

extension ServingError.Kind {
    /// The HTTP status a kind implies, on every route group.
    var status: HTTPResponse.Status {
        switch self {
        case .badInput: .badRequest
        case .notFound: .notFound
        case .methodNotAllowed: .methodNotAllowed
        case .unauthorized: .unauthorized
        case .forbidden: .forbidden
        case .conflict: .conflict
        case .tooLarge: .contentTooLarge
        case .unprocessable: .unprocessableContent
        case .tooMany: .tooManyRequests
        case .notImplemented: .notImplemented
        case .unavailable: .serviceUnavailable
        case .insufficientStorage: .init(code: 507, reasonPhrase: "Insufficient Storage")
        case .timedOut: .requestTimeout
        // Nginx's code for a request the client gave up on: no client reads it, logs do.
        case .clientGone: .init(code: 499, reasonPhrase: "Client Closed Request")
        case .internal: .internalServerError
        }
    }
}

extension ServingError {
    /// The response in `style`: status from the kind, body in the route group's language, never
    /// cached; `Retry-After` when trying again may work, `Allow` for a method not allowed.
    func response(style: ErrorStyle) -> Response {
        var headers = HTTPFields()
        let body: String
        let message = XML.escape(Echo.shortened(message))
        let locatorAttribute = locator.map { " locator=\"\(XML.escape(Echo.shortened($0, to: 64)))\"" } ?? ""
        switch style {
        case .ows:
            headers[.contentType] = "application/xml; charset=utf-8"
            body = """
                <?xml version="1.0" encoding="UTF-8"?>
                <ExceptionReport xmlns="http://www.opengis.net/ows/1.1" version="1.1.0" xml:lang="en">
                  <Exception exceptionCode="\(exceptionCode)"\(locatorAttribute)>
                    <ExceptionText>\(message)</ExceptionText>
                  </Exception>
                </ExceptionReport>

                """
        case .wms:
            headers[.contentType] = "text/xml; charset=utf-8"
            body = """
                <?xml version="1.0" encoding="UTF-8"?>
                <ServiceExceptionReport version="1.3.0" xmlns="http://www.opengis.net/ogc">
                  <ServiceException code="\(exceptionCode)"\(locatorAttribute)>\(message)</ServiceException>
                </ServiceExceptionReport>

                """
        case .json:
            headers[.contentType] = "application/json"
            var object: [String: String] = ["error": exceptionCode, "detail": Echo.shortened(self.message)]
            if let locator { object["parameter"] = locator }
            let data = (try? JSONSerialization.data(withJSONObject: object, options: [.sortedKeys])) ?? Data()
            body = String(decoding: data, as: UTF8.self)
        }
        headers[.cacheControl] = "no-store"
        switch kind {
        case .tooMany: headers[.retryAfter] = "60"
        case .unavailable: headers[.retryAfter] = "5"
        case .methodNotAllowed: headers[.allow] = "GET, HEAD, OPTIONS"
        default: break
        }
        return Response(status: kind.status, headers: headers, body: .init(byteBuffer: ByteBuffer(string: body)))
    }
}

/// Answers the errors of every route: domain errors by their kind, in the language of the route
/// group; anything else is a fault of the server, logged whole and answered without its details
/// (files and libraries name server paths).
struct ErrorMiddleware<Context: RequestContext>: RouterMiddleware {
    func handle(_ request: Request, context: Context, next: (Request, Context) async throws -> Response) async throws
        -> Response
    {
        do {
            return try await next(request, context)
        } catch let e as HTTPError {
            // Hummingbird's own (an unknown route, a body it refused): kept as they are.
            throw e
        } catch {
            let e = ServingError.from(error, what: "the request failed on the server")
            if !(error is ServingError) {
                // The client reads the kind; the operator needs what failed (an object store's
                // address and answer, a path).
                if e.kind == .internal {
                    context.logger.error("\(request.method) \(request.uri.path): \(error)")
                } else if e.kind == .unavailable {
                    context.logger.warning("\(request.method) \(request.uri.path) answered unavailable: \(error)")
                }
            }
            return e.response(style: ErrorStyle(path: request.uri.path))
        }
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
