import NIOCore

/// An AMF0 value: what RTMP commands and stream metadata are written in.
public enum AMF0: Sendable, Equatable {
    case number(Double)
    case boolean(Bool)
    case string(String)
    case object([(String, AMF0)])
    case null
    case undefined
    case ecmaArray([(String, AMF0)])
    case strictArray([AMF0])
    case date(Double)

    public static func == (a: AMF0, b: AMF0) -> Bool {
        switch (a, b) {
        // Bit patterns, so NaN equals itself and a value survives a round trip exactly.
        case (.number(let x), .number(let y)), (.date(let x), .date(let y)): return x.bitPattern == y.bitPattern
        case (.boolean(let x), .boolean(let y)): return x == y
        case (.string(let x), .string(let y)): return x == y
        case (.object(let x), .object(let y)), (.ecmaArray(let x), .ecmaArray(let y)):
            return x.count == y.count && zip(x, y).allSatisfy { $0.0 == $1.0 && $0.1 == $1.1 }
        case (.null, .null), (.undefined, .undefined): return true
        case (.strictArray(let x), .strictArray(let y)): return x == y
        default: return false
        }
    }

    /// The string, if this is one.
    public var stringValue: String? { if case .string(let s) = self { s } else { nil } }
    public var numberValue: Double? { if case .number(let n) = self { n } else { nil } }

    /// A property of an object or ECMA array.
    public subscript(key: String) -> AMF0? {
        switch self {
        case .object(let props), .ecmaArray(let props): return props.first { $0.0 == key }?.1
        default: return nil
        }
    }
}

/// Why AMF0 bytes could not be read.
public struct AMF0Error: Error, Equatable, CustomStringConvertible {
    public var description: String
    init(_ d: String) { description = d }
}

extension AMF0 {
    /// Nesting deeper than this is refused, so hostile input cannot exhaust the stack.
    public static let maxDepth = 32

    /// Reads every value in `buffer` (an RTMP command is a sequence of values).
    public static func decodeAll(_ buffer: ByteBuffer) throws -> [AMF0] {
        var b = buffer
        var values: [AMF0] = []
        while b.readableBytes > 0 { values.append(try decode(&b)) }
        return values
    }

    /// Reads one value, advancing the buffer.
    public static func decode(_ b: inout ByteBuffer, depth: Int = 0) throws -> AMF0 {
        guard depth < maxDepth else { throw AMF0Error("AMF0 nested deeper than \(maxDepth)") }
        guard let marker = b.readInteger(as: UInt8.self) else { throw AMF0Error("AMF0 value expected, input ended") }
        switch marker {
        case 0x00: return .number(try readDouble(&b))
        case 0x01:
            guard let v = b.readInteger(as: UInt8.self) else { throw AMF0Error("AMF0 boolean truncated") }
            return .boolean(v != 0)
        case 0x02: return .string(try readString(&b, long: false))
        case 0x03: return .object(try readProperties(&b, depth: depth))
        case 0x05: return .null
        case 0x06: return .undefined
        case 0x08:
            guard b.readInteger(as: UInt32.self) != nil else { throw AMF0Error("AMF0 ECMA array truncated") }
            // The count is advisory (encoders get it wrong); the end marker is what counts.
            return .ecmaArray(try readProperties(&b, depth: depth))
        case 0x0A:
            guard let count = b.readInteger(as: UInt32.self) else { throw AMF0Error("AMF0 strict array truncated") }
            // Each element takes at least one byte: a count beyond the input is a lie.
            guard Int(count) <= b.readableBytes else { throw AMF0Error("AMF0 strict array claims \(count) elements") }
            var items: [AMF0] = []
            items.reserveCapacity(Int(count))
            for _ in 0..<count { items.append(try decode(&b, depth: depth + 1)) }
            return .strictArray(items)
        case 0x0B:
            let ms = try readDouble(&b)
            guard b.readInteger(as: Int16.self) != nil else { throw AMF0Error("AMF0 date truncated") }
            return .date(ms)
        case 0x0C, 0x0F: return .string(try readString(&b, long: true))
        case 0x0D: return .undefined  // "unsupported"
        default: throw AMF0Error("AMF0 type marker 0x\(String(marker, radix: 16)) is not supported")
        }
    }

    private static func readDouble(_ b: inout ByteBuffer) throws -> Double {
        guard let bits = b.readInteger(as: UInt64.self) else { throw AMF0Error("AMF0 number truncated") }
        return Double(bitPattern: bits)
    }

    private static func readString(_ b: inout ByteBuffer, long: Bool) throws -> String {
        let length: Int
        if long {
            guard let n = b.readInteger(as: UInt32.self) else { throw AMF0Error("AMF0 long string truncated") }
            length = Int(n)
        } else {
            guard let n = b.readInteger(as: UInt16.self) else { throw AMF0Error("AMF0 string truncated") }
            length = Int(n)
        }
        guard let bytes = b.readBytes(length: length) else { throw AMF0Error("AMF0 string of \(length) bytes truncated") }
        guard let s = String(validating: bytes, as: UTF8.self) else { throw AMF0Error("AMF0 string is not UTF-8") }
        return s
    }

    private static func readProperties(_ b: inout ByteBuffer, depth: Int) throws -> [(String, AMF0)] {
        var props: [(String, AMF0)] = []
        while true {
            let key = try readString(&b, long: false)
            if key.isEmpty {
                guard let end = b.readInteger(as: UInt8.self) else { throw AMF0Error("AMF0 object truncated") }
                guard end == 0x09 else { throw AMF0Error("AMF0 object has an empty key without the end marker") }
                return props
            }
            props.append((key, try decode(&b, depth: depth + 1)))
        }
    }

    /// Appends the value's encoding.
    public func encode(into b: inout ByteBuffer) {
        switch self {
        case .number(let n):
            b.writeInteger(UInt8(0x00))
            b.writeInteger(n.bitPattern)
        case .boolean(let v):
            b.writeInteger(UInt8(0x01))
            b.writeInteger(UInt8(v ? 1 : 0))
        case .string(let s):
            let utf8 = s.utf8
            if utf8.count > Int(UInt16.max) {
                b.writeInteger(UInt8(0x0C))
                b.writeInteger(UInt32(utf8.count))
            } else {
                b.writeInteger(UInt8(0x02))
                b.writeInteger(UInt16(utf8.count))
            }
            b.writeBytes(utf8)
        case .object(let props):
            b.writeInteger(UInt8(0x03))
            Self.writeProperties(props, into: &b)
        case .null: b.writeInteger(UInt8(0x05))
        case .undefined: b.writeInteger(UInt8(0x06))
        case .ecmaArray(let props):
            b.writeInteger(UInt8(0x08))
            b.writeInteger(UInt32(props.count))
            Self.writeProperties(props, into: &b)
        case .strictArray(let items):
            b.writeInteger(UInt8(0x0A))
            b.writeInteger(UInt32(items.count))
            for item in items { item.encode(into: &b) }
        case .date(let ms):
            b.writeInteger(UInt8(0x0B))
            b.writeInteger(ms.bitPattern)
            b.writeInteger(Int16(0))
        }
    }

    private static func writeProperties(_ props: [(String, AMF0)], into b: inout ByteBuffer) {
        for (key, value) in props {
            let utf8 = key.utf8.prefix(Int(UInt16.max))
            b.writeInteger(UInt16(utf8.count))
            b.writeBytes(utf8)
            value.encode(into: &b)
        }
        b.writeInteger(UInt16(0))
        b.writeInteger(UInt8(0x09))
    }

    /// Encodes a sequence of values (a command: name, transaction id, arguments).
    public static func encode(_ values: [AMF0], allocator: ByteBufferAllocator = ByteBufferAllocator()) -> ByteBuffer {
        var b = allocator.buffer(capacity: 128)
        for v in values { v.encode(into: &b) }
        return b
    }
}
