/* loadercache._speedups: the per-load steps of loader.py, in C.
 *
 * loader.py is the reference: each function here is a line-for-line
 * translation of the Python method of the same name (DataLoader.load,
 * _enqueue, _new_future, _settle), with the same order of side effects and
 * the same error messages; tests/test_differential.py drives both through
 * the same operations in one process and compares everything observable.
 * Whatever is rare or per batch (the first duplicate of a key in flight,
 * opening a batch, rejecting or forgetting a key, the unhashable-key
 * message) calls back into the Python methods, so each of those has one
 * implementation.
 *
 * Why C at all: on a cache hit the Python load() costs a frame plus about a
 * dozen bytecodes, more than the whole of a bare dict lookup in a Python
 * function; in C a hit is a dict lookup and the done()/cancelled() checks,
 * and a miss makes its future without the Python frame of
 * loop.create_future() (for asyncio's own loops, whose create_future is
 * exactly asyncio.Future(loop=loop)).
 *
 * Every field DataLoader.__init__ sets is a field of the LoaderCore struct,
 * under the attribute name loader.py uses, so that a loader's instance
 * __dict__ is never made.  On CPython 3.12 and later a method lookup such as
 * loader.load specializes only on an object whose attributes are inline
 * values (3.12) or that has no dict at all (3.13: a subclass of a C struct
 * never gets inline values); with the fields in a __dict__ every
 * loader.load(key) took the interpreter's generic attribute lookup, which
 * cost more than the C load() saved.  For the same reason LoaderCore objects
 * are made by object.__new__, which sets up inline values, not by
 * PyType_GenericNew, which does not.
 *
 * Fields the C code relies on the type of (_batch, _counts, _followers,
 * _limit, a batch's lists) refuse a value of another type when assigned, so
 * the per-load code needs no type checks.  Only the public C API is used;
 * the module builds on CPython 3.9 to 3.13 (and is written for 3.14).  It is
 * not built for free-threaded interpreters (setup.py), where the pure Python
 * runs; if it is imported there anyway it says it needs the GIL.
 * LOADERCACHE_NO_EXTENSIONS=1 turns it off at build or import time.
 */

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#if PY_VERSION_HEX < 0x030A00F0
static inline PyObject *
_Py_NewRef_compat(PyObject *obj)
{
    Py_INCREF(obj);
    return obj;
}
#define Py_NewRef(obj) _Py_NewRef_compat((PyObject *)(obj))
#endif

#if PY_VERSION_HEX < 0x030C0000
/* structmember.h's names, which Python.h itself provides from 3.12 on. */
#include "structmember.h"
#define Py_T_OBJECT_EX T_OBJECT_EX
#define Py_T_BOOL T_BOOL
#define Py_T_PYSSIZET T_PYSSIZET
#define Py_READONLY READONLY
#endif

/* Set once by _setup() from loader.py. */
static PyObject *Future = NULL;            /* asyncio.Future */
static PyObject *future_done = NULL;       /* asyncio.Future.done */
static PyObject *future_cancelled = NULL;  /* asyncio.Future.cancelled */
static PyObject *future_set_result = NULL; /* asyncio.Future.set_result */
static PyObject *unhashable_error = NULL;  /* loader._unhashable_error */

/* Interned names of the Python methods called back, and of the keywords. */
static PyObject *str_share = NULL;
static PyObject *str_new_batch = NULL;
static PyObject *str_reject = NULL;
static PyObject *str_forget = NULL;
static PyObject *str_done = NULL;
static PyObject *str_cancelled = NULL;
static PyObject *str_set_result = NULL;
static PyObject *str_append = NULL;
static PyObject *str_key = NULL;
static PyObject *kwnames_loop = NULL; /* ("loop",) */

/* -- typed fields ------------------------------------------------------- */

/* A field the C code reads as a given type: the getter raises the
 * AttributeError Python gives for an attribute never set, the setter refuses
 * another type. */
#define TYPED_FIELD(Struct, field, name, check, what)                          \
    static PyObject *Struct##_get_##field(Struct *self, void *closure)         \
    {                                                                          \
        if (self->field == NULL) {                                             \
            PyErr_Format(PyExc_AttributeError,                                 \
                         "'%.100s' object has no attribute '%s'",              \
                         Py_TYPE(self)->tp_name, name);                        \
            return NULL;                                                       \
        }                                                                      \
        return Py_NewRef(self->field);                                         \
    }                                                                          \
    static int Struct##_set_##field(Struct *self, PyObject *value,             \
                                    void *closure)                             \
    {                                                                          \
        if (value != NULL && !(check)) {                                       \
            PyErr_Format(PyExc_TypeError, "%s must be %s, not %.100s", name,   \
                         what, Py_TYPE(value)->tp_name);                       \
            return -1;                                                         \
        }                                                                      \
        Py_XINCREF(value);                                                     \
        Py_XSETREF(self->field, value);                                        \
        return 0;                                                              \
    }

#define GETSET(Struct, field, name)                                            \
    {name, (getter)Struct##_get_##field, (setter)Struct##_set_##field, NULL,   \
     NULL}

/* The AttributeError of a field __init__ has not set yet. */
static int
missing(PyObject *self, PyObject *field, const char *name)
{
    if (field != NULL) {
        return 0;
    }
    PyErr_Format(PyExc_AttributeError, "'%.100s' object has no attribute '%s'",
                 Py_TYPE(self)->tp_name, name);
    return -1;
}

/* -- CountsCore: the fields of loader._Counts --------------------------- */

typedef struct {
    PyObject_HEAD
    Py_ssize_t local_hits;
    Py_ssize_t local_misses;
    Py_ssize_t batches;
    Py_ssize_t batched_keys;
    Py_ssize_t max_batch;
    Py_ssize_t remote_hits;
    Py_ssize_t remote_misses;
    Py_ssize_t remote_errors;
    Py_ssize_t failed_batches;
} CountsCore;

#define COUNTER(field)                                                         \
    {#field, Py_T_PYSSIZET, offsetof(CountsCore, field), 0, NULL}

static PyMemberDef counts_members[] = {
    COUNTER(local_hits),    COUNTER(local_misses),  COUNTER(batches),
    COUNTER(batched_keys),  COUNTER(max_batch),     COUNTER(remote_hits),
    COUNTER(remote_misses), COUNTER(remote_errors), COUNTER(failed_batches),
    {NULL},
};

static PyTypeObject CountsCore_Type = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "loadercache._speedups.CountsCore",
    .tp_doc = "A loader's live counters (see loader._Counts).",
    .tp_basicsize = sizeof(CountsCore),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE,
    .tp_new = PyType_GenericNew,
    .tp_members = counts_members,
};

/* -- BatchCore: the fields of loader._Batch ----------------------------- */

typedef struct {
    PyObject_HEAD
    PyObject *loop;
    PyObject *keys;       /* a list */
    PyObject *cache_keys; /* a list: keys itself, or aligned with it */
    PyObject *futures;    /* a list */
} BatchCore;

TYPED_FIELD(BatchCore, keys, "keys", PyList_Check(value), "a list")
TYPED_FIELD(BatchCore, cache_keys, "cache_keys", PyList_Check(value), "a list")
TYPED_FIELD(BatchCore, futures, "futures", PyList_Check(value), "a list")

static PyGetSetDef batch_getset[] = {
    GETSET(BatchCore, keys, "keys"),
    GETSET(BatchCore, cache_keys, "cache_keys"),
    GETSET(BatchCore, futures, "futures"),
    {NULL},
};

static PyMemberDef batch_members[] = {
    {"loop", Py_T_OBJECT_EX, offsetof(BatchCore, loop), 0, NULL},
    {NULL},
};

static int
batch_traverse(BatchCore *self, visitproc visit, void *arg)
{
    Py_VISIT(self->loop);
    Py_VISIT(self->keys);
    Py_VISIT(self->cache_keys);
    Py_VISIT(self->futures);
    return 0;
}

static int
batch_clear(BatchCore *self)
{
    Py_CLEAR(self->loop);
    Py_CLEAR(self->keys);
    Py_CLEAR(self->cache_keys);
    Py_CLEAR(self->futures);
    return 0;
}

static void
batch_dealloc(BatchCore *self)
{
    PyObject_GC_UnTrack(self);
    batch_clear(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyTypeObject BatchCore_Type = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "loadercache._speedups.BatchCore",
    .tp_doc = "The fields of a batch (see loader._Batch).",
    .tp_basicsize = sizeof(BatchCore),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE | Py_TPFLAGS_HAVE_GC,
    .tp_new = PyType_GenericNew,
    .tp_dealloc = (destructor)batch_dealloc,
    .tp_traverse = (traverseproc)batch_traverse,
    .tp_clear = (inquiry)batch_clear,
    .tp_members = batch_members,
    .tp_getset = batch_getset,
};

/* -- LoaderCore: the fields of DataLoader ------------------------------- */

typedef struct {
    PyObject_HEAD
    /* Read by the C methods. */
    PyObject *key_fn;        /* _key_fn: None or a callable */
    PyObject *get;           /* _get: the cache map's get (or _never_cached) */
    PyObject *set;           /* _set: the cache map's set */
    char caching;            /* _caching */
    PyObject *batch;         /* _batch: a BatchCore or None */
    PyObject *limit;         /* _limit: an int or None */
    PyObject *loop;          /* _loop */
    PyObject *create_future; /* _create_future: None or loop.create_future */
    PyObject *followers;     /* _followers: a dict */
    PyObject *counts;        /* _counts: a CountsCore */
    /* Only stored here, so that the instance needs no __dict__. */
    PyObject *name;
    PyObject *batch_load_fn;
    PyObject *get_cache_key;
    PyObject *cache_map;
    PyObject *remote;
    PyObject *cache_exceptions;
    PyObject *schedule;
    PyObject *tasks;
} LoaderCore;

TYPED_FIELD(LoaderCore, batch, "_batch",
            value == Py_None || PyObject_TypeCheck(value, &BatchCore_Type),
            "a _Batch or None")
TYPED_FIELD(LoaderCore, limit, "_limit",
            value == Py_None || PyLong_Check(value), "an int or None")
TYPED_FIELD(LoaderCore, followers, "_followers", PyDict_CheckExact(value),
            "a dict")
TYPED_FIELD(LoaderCore, counts, "_counts",
            PyObject_TypeCheck(value, &CountsCore_Type), "a _Counts")

static PyGetSetDef loader_getset[] = {
    GETSET(LoaderCore, batch, "_batch"),
    GETSET(LoaderCore, limit, "_limit"),
    GETSET(LoaderCore, followers, "_followers"),
    GETSET(LoaderCore, counts, "_counts"),
    {NULL},
};

#define FIELD(name, field)                                                     \
    {name, Py_T_OBJECT_EX, offsetof(LoaderCore, field), 0, NULL}

static PyMemberDef loader_members[] = {
    FIELD("_key_fn", key_fn),
    FIELD("_get", get),
    FIELD("_set", set),
    {"_caching", Py_T_BOOL, offsetof(LoaderCore, caching), 0, NULL},
    FIELD("_loop", loop),
    FIELD("_create_future", create_future),
    FIELD("name", name),
    FIELD("batch_load_fn", batch_load_fn),
    FIELD("get_cache_key", get_cache_key),
    FIELD("_cache_map", cache_map),
    FIELD("_remote", remote),
    FIELD("_cache_exceptions", cache_exceptions),
    FIELD("_schedule", schedule),
    FIELD("_tasks", tasks),
    {NULL},
};

static int
loader_traverse(LoaderCore *self, visitproc visit, void *arg)
{
    Py_VISIT(self->key_fn);
    Py_VISIT(self->get);
    Py_VISIT(self->set);
    Py_VISIT(self->batch);
    Py_VISIT(self->limit);
    Py_VISIT(self->loop);
    Py_VISIT(self->create_future);
    Py_VISIT(self->followers);
    Py_VISIT(self->counts);
    Py_VISIT(self->name);
    Py_VISIT(self->batch_load_fn);
    Py_VISIT(self->get_cache_key);
    Py_VISIT(self->cache_map);
    Py_VISIT(self->remote);
    Py_VISIT(self->cache_exceptions);
    Py_VISIT(self->schedule);
    Py_VISIT(self->tasks);
    return 0;
}

static int
loader_clear(LoaderCore *self)
{
    Py_CLEAR(self->key_fn);
    Py_CLEAR(self->get);
    Py_CLEAR(self->set);
    Py_CLEAR(self->batch);
    Py_CLEAR(self->limit);
    Py_CLEAR(self->loop);
    Py_CLEAR(self->create_future);
    Py_CLEAR(self->followers);
    Py_CLEAR(self->counts);
    Py_CLEAR(self->name);
    Py_CLEAR(self->batch_load_fn);
    Py_CLEAR(self->get_cache_key);
    Py_CLEAR(self->cache_map);
    Py_CLEAR(self->remote);
    Py_CLEAR(self->cache_exceptions);
    Py_CLEAR(self->schedule);
    Py_CLEAR(self->tasks);
    return 0;
}

static void
loader_dealloc(LoaderCore *self)
{
    PyObject_GC_UnTrack(self);
    loader_clear(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

#define COUNTS(self) ((CountsCore *)(self)->counts)

/* -- helpers ------------------------------------------------------------- */

/* future.done() and future.cancelled(): straight to asyncio.Future's C
 * methods for asyncio's own futures, through the method lookup for anything
 * else (a subclass may override them; a cache map may hold any future). */
static int
ask(PyObject *future, PyObject *method, PyObject *name)
{
    PyObject *result;
    if (Py_IS_TYPE(future, (PyTypeObject *)Future)) {
        result = PyObject_Vectorcall(method, &future, 1, NULL);
    }
    else {
        result = PyObject_CallMethodNoArgs(future, name);
    }
    if (result == NULL) {
        return -1;
    }
    int answer = PyObject_IsTrue(result);
    Py_DECREF(result);
    return answer;
}

#define is_done(future) ask((future), future_done, str_done)
#define is_cancelled(future) ask((future), future_cancelled, str_cancelled)

static PyObject *
set_result(PyObject *future, PyObject *value)
{
    if (Py_IS_TYPE(future, (PyTypeObject *)Future)) {
        PyObject *args[2] = {future, value};
        return PyObject_Vectorcall(future_set_result, args, 2, NULL);
    }
    return PyObject_CallMethodOneArg(future, str_set_result, value);
}

/* list.append(item), or the append method of whatever else it is. */
static int
append(PyObject *list, PyObject *item)
{
    if (PyList_CheckExact(list)) {
        return PyList_Append(list, item);
    }
    PyObject *result = PyObject_CallMethodOneArg(list, str_append, item);
    Py_XDECREF(result);
    return result == NULL ? -1 : 0;
}

/* -- the translations --------------------------------------------------- */

/* DataLoader._new_future(). */
static PyObject *
new_future(LoaderCore *self)
{
    if (missing((PyObject *)self, self->create_future, "_create_future") ||
        missing((PyObject *)self, self->loop, "_loop")) {
        return NULL;
    }
    if (self->create_future == Py_None) {
        /* What asyncio's own loop.create_future() returns, without its frame. */
        PyObject *loop = Py_NewRef(self->loop);
        PyObject *future = PyObject_Vectorcall(Future, &loop, 0, kwnames_loop);
        Py_DECREF(loop);
        return future;
    }
    return PyObject_CallNoArgs(self->create_future);
}

/* DataLoader._enqueue(key, cache_key): queue a load that missed the cache. */
static PyObject *
enqueue(LoaderCore *self, PyObject *key, PyObject *cache_key)
{
    if (missing((PyObject *)self, self->batch, "_batch") ||
        missing((PyObject *)self, self->limit, "_limit")) {
        return NULL;
    }
    PyObject *batch = Py_NewRef(self->batch), *future = NULL;
    int full = batch == Py_None;
    if (!full && self->limit != Py_None) {
        if (missing(batch, ((BatchCore *)batch)->keys, "keys")) {
            goto error;
        }
        Py_ssize_t limit = PyLong_AsSsize_t(self->limit);
        if (limit == -1 && PyErr_Occurred()) {
            goto error;
        }
        full = PyList_GET_SIZE(((BatchCore *)batch)->keys) == limit;
    }
    if (full) {
        Py_DECREF(batch);
        batch = PyObject_CallMethodNoArgs((PyObject *)self, str_new_batch);
        if (batch == NULL) {
            return NULL;
        }
        if (!PyObject_TypeCheck(batch, &BatchCore_Type)) {
            PyErr_SetString(PyExc_TypeError, "_new_batch() must return a _Batch");
            goto error;
        }
    }
    BatchCore *open = (BatchCore *)batch;
    if (missing(batch, open->keys, "keys") ||
        missing(batch, open->cache_keys, "cache_keys") ||
        missing(batch, open->futures, "futures")) {
        goto error;
    }
    future = new_future(self);
    if (future == NULL) {
        goto error;
    }
    if (self->caching) {
        /* First: a cache map that refuses the key (raising) leaves nothing
         * queued. */
        PyObject *args[2] = {cache_key, future};
        PyObject *result = PyObject_Vectorcall(self->set, args, 2, NULL);
        if (result == NULL) {
            goto error;
        }
        Py_DECREF(result);
    }
    if (self->key_fn != Py_None && PyList_Append(open->cache_keys, cache_key) < 0) {
        goto error;
    }
    if (PyList_Append(open->keys, key) < 0 ||
        PyList_Append(open->futures, future) < 0) {
        goto error;
    }
    COUNTS(self)->local_misses++;
    Py_DECREF(batch);
    return future;

error:
    Py_DECREF(batch);
    Py_XDECREF(future);
    return NULL;
}

/* The TypeError of a failed cache lookup: the unhashable-key message when
 * the key is unhashable, else the error the lookup raised. */
static void
lookup_failed(PyObject *cache_key)
{
    if (!PyErr_ExceptionMatches(PyExc_TypeError)) {
        return;
    }
#if PY_VERSION_HEX >= 0x030C0000
    /* PyErr_Fetch and PyErr_Restore are deprecated from 3.12 on. */
    PyObject *raised = PyErr_GetRaisedException();
#else
    PyObject *type, *value, *traceback;
    PyErr_Fetch(&type, &value, &traceback);
#endif
    PyObject *error = PyObject_CallOneArg(unhashable_error, cache_key);
    if (error == Py_None) {
        /* Hashable: the lookup's own TypeError goes on. */
        Py_DECREF(error);
#if PY_VERSION_HEX >= 0x030C0000
        PyErr_SetRaisedException(raised);
#else
        PyErr_Restore(type, value, traceback);
#endif
        return;
    }
#if PY_VERSION_HEX >= 0x030C0000
    Py_XDECREF(raised);
#else
    Py_XDECREF(type);
    Py_XDECREF(value);
    Py_XDECREF(traceback);
#endif
    if (error == NULL) {
        return;
    }
    /* raise ... from None */
    PyException_SetCause(error, NULL);
    PyErr_SetObject((PyObject *)Py_TYPE(error), error);
    Py_DECREF(error);
}

/* A load that finds future in flight: DataLoader.load's follower branch. */
static PyObject *
follow(LoaderCore *self, PyObject *future, PyObject *key)
{
    PyObject *followers = PyDict_GetItemWithError(self->followers, future);
    if (followers == NULL) {
        if (PyErr_Occurred()) {
            return NULL;
        }
        PyObject *args[3] = {(PyObject *)self, future, key};
        return PyObject_VectorcallMethod(
            str_share, args, 3 | PY_VECTORCALL_ARGUMENTS_OFFSET, NULL);
    }
    Py_INCREF(followers);
    PyObject *mine = new_future(self);
    if (mine != NULL && append(followers, mine) < 0) {
        Py_CLEAR(mine);
    }
    Py_DECREF(followers);
    if (mine != NULL) {
        COUNTS(self)->local_hits++;
    }
    return mine;
}

PyDoc_STRVAR(load_doc,
"load($self, /, key)\n--\n\n"
"Load one key; return a future of its value (see DataLoader.load).");

static PyObject *
loader_load(LoaderCore *self, PyObject *const *args, Py_ssize_t nargs,
            PyObject *kwnames)
{
    /* The signature load(self, key), keyword included, as in Python. */
    Py_ssize_t nkw = kwnames == NULL ? 0 : PyTuple_GET_SIZE(kwnames);
    if (nargs + nkw != 1) {
        PyErr_Format(PyExc_TypeError,
                     nargs + nkw == 0
                         ? "load() missing 1 required positional argument: 'key'"
                         : "load() takes 2 positional arguments but %zd were given",
                     nargs + nkw + 1);
        return NULL;
    }
    if (nkw == 1 && PyUnicode_Compare(PyTuple_GET_ITEM(kwnames, 0), str_key) != 0) {
        if (!PyErr_Occurred()) {
            PyErr_Format(PyExc_TypeError,
                         "load() got an unexpected keyword argument '%U'",
                         PyTuple_GET_ITEM(kwnames, 0));
        }
        return NULL;
    }
    PyObject *key = args[0];
    if (key == Py_None) {
        PyErr_SetString(PyExc_TypeError,
                        "The loader.load() function must be called with a value, "
                        "but got: None.");
        return NULL;
    }
    if (missing((PyObject *)self, self->key_fn, "_key_fn") ||
        missing((PyObject *)self, self->get, "_get") ||
        missing((PyObject *)self, self->set, "_set") ||
        missing((PyObject *)self, self->followers, "_followers") ||
        missing((PyObject *)self, self->counts, "_counts")) {
        return NULL;
    }
    PyObject *cache_key;
    if (self->key_fn == Py_None) {
        cache_key = Py_NewRef(key);
    }
    else {
        cache_key = PyObject_CallOneArg(self->key_fn, key);
        if (cache_key == NULL) {
            return NULL;
        }
    }
    PyObject *future = PyObject_CallOneArg(self->get, cache_key);
    if (future == NULL) {
        lookup_failed(cache_key);
        Py_DECREF(cache_key);
        return NULL;
    }
    if (future != Py_None) {
        int done = is_done(future);
        if (done == 0) {
            Py_DECREF(cache_key);
            PyObject *mine = follow(self, future, key);
            Py_DECREF(future);
            return mine;
        }
        int cancelled = done < 0 ? -1 : is_cancelled(future);
        if (cancelled <= 0) {
            Py_DECREF(cache_key);
            if (cancelled < 0) {
                Py_CLEAR(future);
            }
            else {
                COUNTS(self)->local_hits++;
            }
            return future;
        }
        /* Cancelled by its caller before its batch settled, and left in the
         * cache until then: this load replaces it. */
    }
    Py_DECREF(future);
    future = enqueue(self, key, cache_key);
    Py_DECREF(cache_key);
    return future;
}

PyDoc_STRVAR(enqueue_doc,
"_enqueue($self, key, cache_key, /)\n--\n\n"
"Queue a load that missed the cache (see DataLoader._enqueue).");

static PyObject *
loader_enqueue(LoaderCore *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 2) {
        PyErr_Format(PyExc_TypeError,
                     "_enqueue() takes exactly 2 arguments (%zd given)", nargs);
        return NULL;
    }
    if (missing((PyObject *)self, self->key_fn, "_key_fn") ||
        missing((PyObject *)self, self->set, "_set") ||
        missing((PyObject *)self, self->counts, "_counts")) {
        return NULL;
    }
    return enqueue(self, args[0], args[1]);
}

PyDoc_STRVAR(new_future_doc,
"_new_future($self, /)\n--\n\n"
"A future of the loader's loop (see DataLoader._new_future).");

static PyObject *
loader_new_future(LoaderCore *self, PyObject *Py_UNUSED(ignored))
{
    return new_future(self);
}

PyDoc_STRVAR(settle_doc,
"_settle($self, cache_keys, futures, values, /)\n--\n\n"
"Resolve each load of a batch with its value (see DataLoader._settle).");

static PyObject *
loader_settle(LoaderCore *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 3) {
        PyErr_Format(PyExc_TypeError,
                     "_settle() takes exactly 3 arguments (%zd given)", nargs);
        return NULL;
    }
    /* zip(cache_keys, futures, values), each read as a sequence. */
    PyObject *seqs[3] = {NULL, NULL, NULL};
    for (int s = 0; s < 3; s++) {
        seqs[s] = PySequence_Fast(args[s], "zip argument must support iteration");
        if (seqs[s] == NULL) {
            goto error;
        }
    }
    /* As far as the shortest; the sizes re-read each time round. */
    for (Py_ssize_t i = 0;; i++) {
        if (i >= PySequence_Fast_GET_SIZE(seqs[0]) ||
            i >= PySequence_Fast_GET_SIZE(seqs[1]) ||
            i >= PySequence_Fast_GET_SIZE(seqs[2])) {
            break;
        }
        PyObject *cache_key = Py_NewRef(PySequence_Fast_GET_ITEM(seqs[0], i));
        PyObject *future = Py_NewRef(PySequence_Fast_GET_ITEM(seqs[1], i));
        PyObject *value = Py_NewRef(PySequence_Fast_GET_ITEM(seqs[2], i));
        PyObject *result = NULL;
        int done = is_done(future);
        if (done > 0) {
            /* Cancelled by its caller while the batch ran. */
            PyObject *call[3] = {(PyObject *)self, cache_key, future};
            result = PyObject_VectorcallMethod(
                str_forget, call, 3 | PY_VECTORCALL_ARGUMENTS_OFFSET, NULL);
        }
        else if (done == 0) {
            int error = PyObject_IsInstance(value, PyExc_Exception);
            if (error > 0) {
                PyObject *call[4] = {(PyObject *)self, cache_key, future, value};
                result = PyObject_VectorcallMethod(
                    str_reject, call, 4 | PY_VECTORCALL_ARGUMENTS_OFFSET, NULL);
            }
            else if (error == 0) {
                result = set_result(future, value);
            }
        }
        Py_DECREF(cache_key);
        Py_DECREF(future);
        Py_DECREF(value);
        if (result == NULL) {
            goto error;
        }
        Py_DECREF(result);
    }
    for (int s = 0; s < 3; s++) {
        Py_DECREF(seqs[s]);
    }
    Py_RETURN_NONE;

error:
    for (int s = 0; s < 3; s++) {
        Py_XDECREF(seqs[s]);
    }
    return NULL;
}

static PyMethodDef loader_methods[] = {
    {"load", (PyCFunction)(void (*)(void))loader_load,
     METH_FASTCALL | METH_KEYWORDS, load_doc},
    {"_enqueue", (PyCFunction)(void (*)(void))loader_enqueue, METH_FASTCALL,
     enqueue_doc},
    {"_new_future", (PyCFunction)loader_new_future, METH_NOARGS,
     new_future_doc},
    {"_settle", (PyCFunction)(void (*)(void))loader_settle, METH_FASTCALL,
     settle_doc},
    {NULL},
};

static PyTypeObject LoaderCore_Type = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "loadercache._speedups.LoaderCore",
    .tp_doc = "The fields and per-load methods of DataLoader, in C.",
    .tp_basicsize = sizeof(LoaderCore),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE | Py_TPFLAGS_HAVE_GC,
    /* tp_new: object.__new__, set in speedups_exec (see the top). */
    .tp_dealloc = (destructor)loader_dealloc,
    .tp_traverse = (traverseproc)loader_traverse,
    .tp_clear = (inquiry)loader_clear,
    .tp_methods = loader_methods,
    .tp_members = loader_members,
    .tp_getset = loader_getset,
};

/* -- HitCounter and NearGet: RedisCacheMap._near_get, in C ---------------- */

/* A count shared by the near getters of one store (backends.redis._near). */
typedef struct {
    PyObject_HEAD
    Py_ssize_t value;
} HitCounter;

static PyMemberDef hitcounter_members[] = {
    {"value", Py_T_PYSSIZET, offsetof(HitCounter, value), 0, NULL},
    {NULL},
};

static PyTypeObject HitCounter_Type = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "loadercache._speedups.HitCounter",
    .tp_doc = "A count of near cache hits (see backends.redis._near.HitCounter).",
    .tp_basicsize = sizeof(HitCounter),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_new = PyType_GenericNew,
    .tp_members = hitcounter_members,
};

/* A cache map's get with a near cache: the local future, else the near
 * cache's, which the local map then keeps.  Line for line
 * backends/redis/_cache_map.py RedisCacheMap._near_get, as a callable object
 * so that load() makes no Python frame for it. */
typedef struct {
    PyObject_HEAD
    PyObject *local_get;
    PyObject *local_set;
    PyObject *near; /* a dict */
    PyObject *hits; /* a HitCounter */
    vectorcallfunc vectorcall;
} NearGet;

static PyObject *
nearget_vectorcall(NearGet *self, PyObject *const *args, size_t nargsf,
                   PyObject *kwnames)
{
    if (PyVectorcall_NARGS(nargsf) != 1 ||
        (kwnames != NULL && PyTuple_GET_SIZE(kwnames) != 0)) {
        PyErr_SetString(PyExc_TypeError, "get() takes exactly one argument");
        return NULL;
    }
    PyObject *key = args[0];
    PyObject *future = PyObject_CallOneArg(self->local_get, key);
    if (future == NULL || future != Py_None) {
        return future;
    }
    Py_DECREF(future);
    future = PyDict_GetItemWithError(self->near, key); /* borrowed */
    if (future == NULL) {
        if (PyErr_Occurred()) {
            return NULL;
        }
        Py_RETURN_NONE;
    }
    Py_INCREF(future);
    PyObject *call[2] = {key, future};
    PyObject *result = PyObject_Vectorcall(self->local_set, call, 2, NULL);
    if (result == NULL) {
        Py_DECREF(future);
        return NULL;
    }
    Py_DECREF(result);
    ((HitCounter *)self->hits)->value += 1;
    return future;
}

static PyObject *
nearget_new(PyTypeObject *type, PyObject *args, PyObject *kwargs)
{
    PyObject *local_get, *local_set, *near, *hits;
    if (kwargs != NULL && PyDict_GET_SIZE(kwargs) != 0) {
        PyErr_SetString(PyExc_TypeError, "NearGet() takes no keyword arguments");
        return NULL;
    }
    if (!PyArg_UnpackTuple(args, "NearGet", 4, 4, &local_get, &local_set, &near,
                           &hits)) {
        return NULL;
    }
    if (!PyCallable_Check(local_get) || !PyCallable_Check(local_set) ||
        !PyDict_Check(near) || !PyObject_TypeCheck(hits, &HitCounter_Type)) {
        PyErr_SetString(PyExc_TypeError,
                        "NearGet(local_get, local_set, near: dict, hits: HitCounter)");
        return NULL;
    }
    NearGet *self = (NearGet *)type->tp_alloc(type, 0);
    if (self == NULL) {
        return NULL;
    }
    self->local_get = Py_NewRef(local_get);
    self->local_set = Py_NewRef(local_set);
    self->near = Py_NewRef(near);
    self->hits = Py_NewRef(hits);
    self->vectorcall = (vectorcallfunc)nearget_vectorcall;
    return (PyObject *)self;
}

static int
nearget_traverse(NearGet *self, visitproc visit, void *arg)
{
    Py_VISIT(self->local_get);
    Py_VISIT(self->local_set);
    Py_VISIT(self->near);
    Py_VISIT(self->hits);
    return 0;
}

static int
nearget_clear(NearGet *self)
{
    Py_CLEAR(self->local_get);
    Py_CLEAR(self->local_set);
    Py_CLEAR(self->near);
    Py_CLEAR(self->hits);
    return 0;
}

static void
nearget_dealloc(NearGet *self)
{
    PyObject_GC_UnTrack(self);
    nearget_clear(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyTypeObject NearGet_Type = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "loadercache._speedups.NearGet",
    .tp_doc = "RedisCacheMap._near_get as a callable object.",
    .tp_basicsize = sizeof(NearGet),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_HAVE_VECTORCALL,
    .tp_new = nearget_new,
    .tp_dealloc = (destructor)nearget_dealloc,
    .tp_traverse = (traverseproc)nearget_traverse,
    .tp_clear = (inquiry)nearget_clear,
    .tp_call = PyVectorcall_Call,
    .tp_vectorcall_offset = offsetof(NearGet, vectorcall),
};

/* -- ShortSet: RedisCacheMap.set's common case, in C ---------------------- */

#define SHORT_INT_BITS 2000

/* Whether key is a str or an int (not a bool) of at most SHORT_INT_BITS
   bits; -1 on error. */
static int
is_short_key(PyObject *key)
{
    if (PyUnicode_CheckExact(key)) {
        return 1;
    }
    if (!PyLong_CheckExact(key)) {
        return 0;
    }
    size_t bits = _PyLong_NumBits(key);
    if (bits == (size_t)-1 && PyErr_Occurred()) {
        return -1;
    }
    return bits <= SHORT_INT_BITS;
}

typedef struct {
    PyObject_HEAD
    PyObject *local_set;
    PyObject *slow;
    vectorcallfunc vectorcall;
} ShortSet;

static PyObject *
shortset_vectorcall(ShortSet *self, PyObject *const *args, size_t nargsf,
                    PyObject *kwnames)
{
    if (PyVectorcall_NARGS(nargsf) != 2 ||
        (kwnames != NULL && PyTuple_GET_SIZE(kwnames) != 0)) {
        PyErr_SetString(PyExc_TypeError, "set() takes exactly two arguments");
        return NULL;
    }
    /* A short key's future still pending (a load's): only held locally. */
    int short_key = is_short_key(args[0]);
    if (short_key < 0) {
        return NULL;
    }
    if (short_key) {
        PyObject *done = PyObject_CallMethodNoArgs(args[1], str_done);
        if (done == NULL) {
            return NULL;
        }
        Py_DECREF(done);
        if (done == Py_False) {
            return PyObject_Vectorcall(self->local_set, args, 2, NULL);
        }
    }
    return PyObject_Vectorcall(self->slow, args, 2, NULL);
}

static PyObject *
shortset_new(PyTypeObject *type, PyObject *args, PyObject *kwargs)
{
    PyObject *local_set, *slow;
    if (kwargs != NULL && PyDict_GET_SIZE(kwargs) != 0) {
        PyErr_SetString(PyExc_TypeError, "ShortSet() takes no keyword arguments");
        return NULL;
    }
    if (!PyArg_UnpackTuple(args, "ShortSet", 2, 2, &local_set, &slow)) {
        return NULL;
    }
    if (!PyCallable_Check(local_set) || !PyCallable_Check(slow)) {
        PyErr_SetString(PyExc_TypeError, "ShortSet(local_set, slow)");
        return NULL;
    }
    ShortSet *self = (ShortSet *)type->tp_alloc(type, 0);
    if (self == NULL) {
        return NULL;
    }
    self->local_set = Py_NewRef(local_set);
    self->slow = Py_NewRef(slow);
    self->vectorcall = (vectorcallfunc)shortset_vectorcall;
    return (PyObject *)self;
}

static int
shortset_traverse(ShortSet *self, visitproc visit, void *arg)
{
    Py_VISIT(self->local_set);
    Py_VISIT(self->slow);
    return 0;
}

static int
shortset_clear(ShortSet *self)
{
    Py_CLEAR(self->local_set);
    Py_CLEAR(self->slow);
    return 0;
}

static void
shortset_dealloc(ShortSet *self)
{
    PyObject_GC_UnTrack(self);
    shortset_clear(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyTypeObject ShortSet_Type = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "loadercache._speedups.ShortSet",
    .tp_doc = "ShortSet(local_set, slow): _cache_map._short_set as a callable "
              "object.",
    .tp_basicsize = sizeof(ShortSet),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_HAVE_VECTORCALL,
    .tp_new = shortset_new,
    .tp_dealloc = (destructor)shortset_dealloc,
    .tp_traverse = (traverseproc)shortset_traverse,
    .tp_clear = (inquiry)shortset_clear,
    .tp_call = PyVectorcall_Call,
    .tp_vectorcall_offset = offsetof(ShortSet, vectorcall),
};

/* -- _bulks: the common replies of backends/redis/_resp.py, in C --------- */

PyDoc_STRVAR(bulks_doc,
"_bulks($module, buf, pos, count, max_bulk, /)\n--\n\n"
"The leading elements of an array at *pos* of *buf* that are complete bulk\n"
"strings (at most *max_bulk* bytes; -1: no limit) or nulls, at most *count*\n"
"of them, and the position after them: (list, pos).  It stops at the first\n"
"element that is anything else, incomplete or malformed, which\n"
"Parser.gets then parses (or refuses) as if this had not run.");

static PyObject *
module_bulks(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 4 || !PyBytes_Check(args[0])) {
        PyErr_SetString(PyExc_TypeError, "_bulks(buf: bytes, pos, count, max_bulk)");
        return NULL;
    }
    Py_ssize_t pos = PyLong_AsSsize_t(args[1]);
    Py_ssize_t count = PyLong_AsSsize_t(args[2]);
    Py_ssize_t max_bulk = PyLong_AsSsize_t(args[3]);
    if (PyErr_Occurred()) {
        return NULL;
    }
    const char *buf = PyBytes_AS_STRING(args[0]);
    Py_ssize_t end = PyBytes_GET_SIZE(args[0]);
    PyObject *items = PyList_New(0);
    if (items == NULL) {
        return NULL;
    }
    while (count > 0 && pos >= 0 && pos + 3 <= end) {
        PyObject *value;
        if (buf[pos] == '_' && buf[pos + 1] == '\r' && buf[pos + 2] == '\n') {
            value = Py_NewRef(Py_None);
            pos += 3;
        }
        else if (buf[pos] == '$') {
            /* A length of plain digits, or -1; anything else is Python's. */
            Py_ssize_t at = pos + 1, length = 0, digits = 0;
            int negative = 0;
            if (at < end && buf[at] == '-') {
                negative = 1;
                at++;
            }
            /* Few enough digits that the length fits a Py_ssize_t. */
            const Py_ssize_t most = sizeof(Py_ssize_t) >= 8 ? 18 : 9;
            while (at < end && buf[at] >= '0' && buf[at] <= '9' && digits < most) {
                length = length * 10 + (buf[at] - '0');
                at++;
                digits++;
            }
            if (digits == 0 || at + 2 > end || buf[at] != '\r' || buf[at + 1] != '\n') {
                break;
            }
            at += 2;
            if (negative) {
                if (length != 1) {
                    break;
                }
                value = Py_NewRef(Py_None);
                pos = at;
            }
            else {
                if ((max_bulk >= 0 && length > max_bulk) || length > end - at - 2 ||
                    buf[at + length] != '\r' || buf[at + length + 1] != '\n') {
                    break;
                }
                value = PyBytes_FromStringAndSize(buf + at, length);
                if (value == NULL) {
                    Py_DECREF(items);
                    return NULL;
                }
                pos = at + length + 2;
            }
        }
        else {
            break;
        }
        if (PyList_Append(items, value) < 0) {
            Py_DECREF(value);
            Py_DECREF(items);
            return NULL;
        }
        Py_DECREF(value);
        count--;
    }
    PyObject *position = PyLong_FromSsize_t(pos);
    if (position == NULL) {
        Py_DECREF(items);
        return NULL;
    }
    PyObject *result = PyTuple_Pack(2, items, position);
    Py_DECREF(items);
    Py_DECREF(position);
    return result;
}

/* -- _encode: backends/redis/_resp.py's encode, for commands of bytes -- */

PyDoc_STRVAR(encode_doc,
"_encode($module, command, /)\n--\n\n"
"The RESP array of bulk strings that *command* (a tuple or list) is, as\n"
"_resp.encode writes it; None if an argument is not exactly bytes (which\n"
"encode then converts, or refuses, itself).");

/* The decimal digits of n >= 0 at out; how many. */
static Py_ssize_t
write_digits(char *out, Py_ssize_t n)
{
    char digits[24];
    Py_ssize_t count = 0;
    do {
        digits[count++] = (char)('0' + n % 10);
        n /= 10;
    } while (n > 0);
    for (Py_ssize_t i = 0; i < count; i++) {
        out[i] = digits[count - 1 - i];
    }
    return count;
}

static Py_ssize_t
count_digits(Py_ssize_t n)
{
    Py_ssize_t count = 1;
    while (n >= 10) {
        n /= 10;
        count++;
    }
    return count;
}

static PyObject *
module_encode(PyObject *module, PyObject *command)
{
    PyObject *sequence = PySequence_Fast(command, "_encode(command: tuple | list)");
    if (sequence == NULL) {
        return NULL;
    }
    Py_ssize_t n = PySequence_Fast_GET_SIZE(sequence);
    PyObject **args = PySequence_Fast_ITEMS(sequence);
    /* "*<n>\r\n", then "$<len>\r\n<arg>\r\n" per argument. */
    Py_ssize_t size = 3 + count_digits(n);
    for (Py_ssize_t i = 0; i < n; i++) {
        if (!PyBytes_CheckExact(args[i])) {
            Py_DECREF(sequence);
            Py_RETURN_NONE;
        }
        Py_ssize_t length = PyBytes_GET_SIZE(args[i]);
        size += 5 + count_digits(length) + length;
    }
    PyObject *result = PyBytes_FromStringAndSize(NULL, size);
    if (result == NULL) {
        Py_DECREF(sequence);
        return NULL;
    }
    char *out = PyBytes_AS_STRING(result);
    *out++ = '*';
    out += write_digits(out, n);
    *out++ = '\r';
    *out++ = '\n';
    for (Py_ssize_t i = 0; i < n; i++) {
        Py_ssize_t length = PyBytes_GET_SIZE(args[i]);
        *out++ = '$';
        out += write_digits(out, length);
        *out++ = '\r';
        *out++ = '\n';
        memcpy(out, PyBytes_AS_STRING(args[i]), (size_t)length);
        out += length;
        *out++ = '\r';
        *out++ = '\n';
    }
    Py_DECREF(sequence);
    return result;
}

/* -- _short_keys: the str and int keys of backends/redis/_keys.py -------- */

PyDoc_STRVAR(short_keys_doc,
"_short_keys($module, str_base, int_base, keys, /)\n--\n\n"
"_keys._short_keys_py, in C: for each key of the list *keys*, *str_base*\n"
"plus its UTF-8 (surrogatepass) for a str, *int_base* plus its decimal\n"
"digits for an int of at most SHORT_INT_BITS bits (not a bool); None for\n"
"any other key, which redis_keys then encodes itself.  Returns (rkeys, how\n"
"many are None).");

static PyObject *
concat_bytes(PyObject *base, const char *data, Py_ssize_t length)
{
    Py_ssize_t size = PyBytes_GET_SIZE(base);
    PyObject *result = PyBytes_FromStringAndSize(NULL, size + length);
    if (result != NULL) {
        memcpy(PyBytes_AS_STRING(result), PyBytes_AS_STRING(base), (size_t)size);
        memcpy(PyBytes_AS_STRING(result) + size, data, (size_t)length);
    }
    return result;
}

static PyObject *
module_short_keys(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 3 || !PyBytes_CheckExact(args[0]) || !PyBytes_CheckExact(args[1]) ||
        !PyList_CheckExact(args[2])) {
        PyErr_SetString(PyExc_TypeError,
                        "_short_keys(str_base: bytes, int_base: bytes, keys: list)");
        return NULL;
    }
    PyObject *str_base = args[0], *int_base = args[1], *keys = args[2];
    Py_ssize_t n = PyList_GET_SIZE(keys);
    PyObject *rkeys = PyList_New(n);
    if (rkeys == NULL) {
        return NULL;
    }
    Py_ssize_t others = 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *key = PyList_GET_ITEM(keys, i);
        PyObject *rkey = NULL;
        if (PyUnicode_CheckExact(key)) {
            PyObject *encoded = PyUnicode_AsEncodedString(key, "utf-8", "surrogatepass");
            if (encoded == NULL) {
                Py_DECREF(rkeys);
                return NULL;
            }
            rkey = concat_bytes(str_base, PyBytes_AS_STRING(encoded),
                                PyBytes_GET_SIZE(encoded));
            Py_DECREF(encoded);
        }
        else if (PyLong_CheckExact(key)) {
            int overflow = 0;
            long long value = PyLong_AsLongLongAndOverflow(key, &overflow);
            if (value == -1 && PyErr_Occurred()) {
                Py_DECREF(rkeys);
                return NULL;
            }
            if (!overflow) {
                char digits[24];
                int length = snprintf(digits, sizeof(digits), "%lld", value);
                rkey = concat_bytes(int_base, digits, length);
            }
            else {
                size_t bits = _PyLong_NumBits(key);
                if (bits == (size_t)-1 && PyErr_Occurred()) {
                    Py_DECREF(rkeys);
                    return NULL;
                }
                if (bits <= SHORT_INT_BITS) {
                    PyObject *text = PyObject_Str(key);
                    if (text == NULL) {
                        Py_DECREF(rkeys);
                        return NULL;
                    }
                    Py_ssize_t length;
                    const char *data = PyUnicode_AsUTF8AndSize(text, &length);
                    rkey = data == NULL ? NULL : concat_bytes(int_base, data, length);
                    Py_DECREF(text);
                }
                else {
                    rkey = Py_NewRef(Py_None);
                    others++;
                }
            }
        }
        else {
            rkey = Py_NewRef(Py_None);
            others++;
        }
        if (rkey == NULL) {
            Py_DECREF(rkeys);
            return NULL;
        }
        PyList_SET_ITEM(rkeys, i, rkey);
    }
    return Py_BuildValue("(Nn)", rkeys, others);
}

/* -- _open_plain: the common values of backends/redis/_envelope.py ------- */

PyDoc_STRVAR(open_plain_doc,
"_open_plain($module, prefix, header, rkeys, raws, loads, miss, later, /)\n--\n\n"
"_envelope._open_plain_py, in C: for each raw, *miss* if it is None; the\n"
"payload (decoded by *loads*, unless *loads* is None) of a raw that starts\n"
"with *prefix*, is at least *header* bytes long and is bound to its rkey\n"
"(the big-endian CRC-32 after the prefix); *later* for any other raw, and\n"
"for one whose loads raised an Exception, which Envelope.open_all then\n"
"opens (or refuses) itself.  Returns (values, how many are *later*).");

static uint32_t crc_table[256];

static void
crc_init(void)
{
    for (uint32_t i = 0; i < 256; i++) {
        uint32_t c = i;
        for (int k = 0; k < 8; k++) {
            c = (c & 1) ? 0xEDB88320u ^ (c >> 1) : c >> 1;
        }
        crc_table[i] = c;
    }
}

/* zlib.crc32(data) */
static uint32_t
crc32_of(const unsigned char *data, Py_ssize_t length)
{
    uint32_t c = 0xFFFFFFFFu;
    for (Py_ssize_t i = 0; i < length; i++) {
        c = crc_table[(c ^ data[i]) & 0xFF] ^ (c >> 8);
    }
    return c ^ 0xFFFFFFFFu;
}

static PyObject *
module_open_plain(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 7 || !PyBytes_Check(args[0]) || !PyList_CheckExact(args[2]) ||
        !PyList_CheckExact(args[3])) {
        PyErr_SetString(PyExc_TypeError,
                        "_open_plain(prefix: bytes, header, rkeys: list, raws: list, "
                        "loads, miss, later)");
        return NULL;
    }
    PyObject *prefix = args[0];
    Py_ssize_t header = PyLong_AsSsize_t(args[1]);
    if (header == -1 && PyErr_Occurred()) {
        return NULL;
    }
    PyObject *rkeys = args[2], *raws = args[3], *loads = args[4];
    PyObject *miss = args[5], *later = args[6];
    const char *want = PyBytes_AS_STRING(prefix);
    Py_ssize_t prefix_size = PyBytes_GET_SIZE(prefix);
    if (header < prefix_size + 4) {
        PyErr_SetString(PyExc_ValueError, "_open_plain: header shorter than prefix + 4");
        return NULL;
    }
    /* (zip: as many as the shorter holds) */
    Py_ssize_t n = PyList_GET_SIZE(raws);
    if (PyList_GET_SIZE(rkeys) < n) {
        n = PyList_GET_SIZE(rkeys);
    }
    PyObject *values = PyList_New(n);
    if (values == NULL) {
        return NULL;
    }
    Py_ssize_t laters = 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *value = NULL;
        if (i >= PyList_GET_SIZE(raws) || i >= PyList_GET_SIZE(rkeys)) {
            /* Shortened by a loads of ours (never in practice): what is gone
               is Python's to open, or to fail on. */
            value = Py_NewRef(later);
            laters++;
            PyList_SET_ITEM(values, i, value);
            continue;
        }
        PyObject *raw = PyList_GET_ITEM(raws, i);
        PyObject *rkey = PyList_GET_ITEM(rkeys, i);
        if (raw == Py_None) {
            value = Py_NewRef(miss);
        }
        else if (PyBytes_CheckExact(raw) && PyBytes_CheckExact(rkey) &&
                 PyBytes_GET_SIZE(raw) >= header &&
                 memcmp(PyBytes_AS_STRING(raw), want, (size_t)prefix_size) == 0) {
            const unsigned char *bound =
                (const unsigned char *)PyBytes_AS_STRING(raw) + prefix_size;
            uint32_t stored = ((uint32_t)bound[0] << 24) | ((uint32_t)bound[1] << 16) |
                              ((uint32_t)bound[2] << 8) | (uint32_t)bound[3];
            if (stored == crc32_of((const unsigned char *)PyBytes_AS_STRING(rkey),
                                   PyBytes_GET_SIZE(rkey))) {
                PyObject *payload = PyBytes_FromStringAndSize(
                    PyBytes_AS_STRING(raw) + header, PyBytes_GET_SIZE(raw) - header);
                if (payload == NULL) {
                    Py_DECREF(values);
                    return NULL;
                }
                if (loads == Py_None) {
                    value = payload;
                }
                else {
                    value = PyObject_CallOneArg(loads, payload);
                    Py_DECREF(payload);
                    if (value == NULL) {
                        if (!PyErr_ExceptionMatches(PyExc_Exception)) {
                            Py_DECREF(values);
                            return NULL; /* KeyboardInterrupt and the like */
                        }
                        PyErr_Clear();
                    }
                }
            }
        }
        if (value == NULL) {
            value = Py_NewRef(later);
            laters++;
        }
        PyList_SET_ITEM(values, i, value);
    }
    PyObject *result = Py_BuildValue("(Nn)", values, laters);
    return result;
}

/* -- the module --------------------------------------------------------- */

PyDoc_STRVAR(setup_doc,
"_setup($module, unhashable_error, /)\n--\n\n"
"Hand the C code the Python objects of loader.py it uses.");

static PyObject *
module_setup(PyObject *module, PyObject *unhashable)
{
    PyObject *asyncio = PyImport_ImportModule("asyncio");
    if (asyncio == NULL) {
        return NULL;
    }
    PyObject *future = PyObject_GetAttrString(asyncio, "Future");
    Py_DECREF(asyncio);
    if (future == NULL) {
        return NULL;
    }
    PyObject *done = PyObject_GetAttr(future, str_done);
    PyObject *cancelled = PyObject_GetAttr(future, str_cancelled);
    PyObject *setter = PyObject_GetAttr(future, str_set_result);
    if (!PyType_Check(future) || done == NULL || cancelled == NULL ||
        setter == NULL) {
        if (!PyErr_Occurred()) {
            PyErr_SetString(PyExc_TypeError, "asyncio.Future is not a class");
        }
        Py_DECREF(future);
        Py_XDECREF(done);
        Py_XDECREF(cancelled);
        Py_XDECREF(setter);
        return NULL;
    }
    Py_XSETREF(Future, future);
    Py_XSETREF(future_done, done);
    Py_XSETREF(future_cancelled, cancelled);
    Py_XSETREF(future_set_result, setter);
    Py_INCREF(unhashable);
    Py_XSETREF(unhashable_error, unhashable);
    Py_RETURN_NONE;
}

static PyMethodDef module_methods[] = {
    {"_setup", (PyCFunction)module_setup, METH_O, setup_doc},
    {"_bulks", (PyCFunction)(void (*)(void))module_bulks, METH_FASTCALL, bulks_doc},
    {"_encode", (PyCFunction)module_encode, METH_O, encode_doc},
    {"_short_keys", (PyCFunction)(void (*)(void))module_short_keys, METH_FASTCALL,
     short_keys_doc},
    {"_open_plain", (PyCFunction)(void (*)(void))module_open_plain, METH_FASTCALL,
     open_plain_doc},
    {NULL},
};

static int
add_type(PyObject *module, const char *name, PyTypeObject *type)
{
#if PY_VERSION_HEX >= 0x030A0000
    return PyModule_AddObjectRef(module, name, (PyObject *)type);
#else
    Py_INCREF(type);
    if (PyModule_AddObject(module, name, (PyObject *)type) < 0) {
        Py_DECREF(type);
        return -1;
    }
    return 0;
#endif
}

static int
speedups_exec(PyObject *module)
{
    crc_init();
    /* object.__new__ sets up a subclass instance's inline values. */
    LoaderCore_Type.tp_new = PyBaseObject_Type.tp_new;
    if (PyType_Ready(&CountsCore_Type) < 0 || PyType_Ready(&BatchCore_Type) < 0 ||
        PyType_Ready(&LoaderCore_Type) < 0 || PyType_Ready(&HitCounter_Type) < 0 ||
        PyType_Ready(&NearGet_Type) < 0 || PyType_Ready(&ShortSet_Type) < 0) {
        return -1;
    }
#define INTERN(var, text)                                                      \
    if (var == NULL && (var = PyUnicode_InternFromString(text)) == NULL) {     \
        return -1;                                                             \
    }
    INTERN(str_share, "_share")
    INTERN(str_new_batch, "_new_batch")
    INTERN(str_reject, "_reject")
    INTERN(str_forget, "_forget")
    INTERN(str_done, "done")
    INTERN(str_cancelled, "cancelled")
    INTERN(str_set_result, "set_result")
    INTERN(str_append, "append")
    INTERN(str_key, "key")
#undef INTERN
    if (kwnames_loop == NULL && (kwnames_loop = Py_BuildValue("(s)", "loop")) == NULL) {
        return -1;
    }
    if (add_type(module, "CountsCore", &CountsCore_Type) < 0 ||
        add_type(module, "BatchCore", &BatchCore_Type) < 0 ||
        add_type(module, "LoaderCore", &LoaderCore_Type) < 0 ||
        add_type(module, "HitCounter", &HitCounter_Type) < 0 ||
        add_type(module, "NearGet", &NearGet_Type) < 0 ||
        add_type(module, "ShortSet", &ShortSet_Type) < 0) {
        return -1;
    }
    return 0;
}

static PyModuleDef_Slot speedups_slots[] = {
    {Py_mod_exec, speedups_exec},
#if PY_VERSION_HEX >= 0x030C0000
    /* Static types and module-level state: one interpreter per process. */
    {Py_mod_multiple_interpreters, Py_MOD_MULTIPLE_INTERPRETERS_NOT_SUPPORTED},
#endif
#ifdef Py_mod_gil
    /* Not written for free threading (setup.py does not build it there). */
    {Py_mod_gil, Py_MOD_GIL_USED},
#endif
    {0, NULL},
};

static struct PyModuleDef speedups_module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "loadercache._speedups",
    .m_doc = "The per-load steps of loadercache.loader, in C.",
    .m_size = 0,
    .m_methods = module_methods,
    .m_slots = speedups_slots,
};

PyMODINIT_FUNC
PyInit__speedups(void)
{
    return PyModuleDef_Init(&speedups_module);
}
