/* loadercache._speedups: the per-load steps of loader.py, in C.
 *
 * loader.py is the reference: every function here is a line-for-line
 * translation of the Python method of the same name (DataLoader.load,
 * DataLoader._enqueue, DataLoader._settle), with the same checks, the same
 * order of side effects and the same error messages.  Whatever is rare or
 * per batch (sharing an in-flight future, opening a batch, rejecting a key,
 * the unhashable-key message) calls back into the Python methods, so there
 * is one implementation of each of those.
 *
 * Why C at all: on a cache hit the Python load() costs a frame plus about
 * a dozen bytecodes, more than the whole of a bare dict lookup in a Python
 * function; in C a hit is a dict lookup and the done()/cancelled() checks,
 * and a miss makes its future without the Python frame of
 * loop.create_future() (for asyncio's own loops, whose create_future is
 * exactly asyncio.Future(loop=loop); any other loop's is called).
 *
 * The state the hot path reads lives in the C structs below and is exposed
 * to Python under the attribute names loader.py uses (self._get,
 * batch.keys, ...), so loader.py reads and writes it the same way with or
 * without this module.  Only the public C API is used, so the module builds
 * on CPython 3.9 to 3.13.  LOADERCACHE_NO_EXTENSIONS=1 turns it off at build
 * or import time.
 */

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include "structmember.h"

#if PY_VERSION_HEX < 0x030A00F0
static inline PyObject *
_Py_NewRef_compat(PyObject *obj)
{
    Py_INCREF(obj);
    return obj;
}
#define Py_NewRef(obj) _Py_NewRef_compat((PyObject *)(obj))
#endif

/* Set once by _setup() from loader.py. */
static PyObject *Future = NULL;            /* asyncio.Future */
static PyObject *future_done = NULL;       /* asyncio.Future.done */
static PyObject *future_cancelled = NULL;  /* asyncio.Future.cancelled */
static PyObject *future_set_result = NULL; /* asyncio.Future.set_result */
static PyObject *unhashable_error = NULL; /* loader._unhashable_error */
static PyObject *no_key = NULL;          /* loader._NO_KEY */

/* Interned names of the Python methods called back, and of the keyword. */
static PyObject *str_share = NULL;
static PyObject *str_new_batch = NULL;
static PyObject *str_reject = NULL;
static PyObject *str_forget = NULL;
static PyObject *str_done = NULL;
static PyObject *str_cancelled = NULL;
static PyObject *str_set_result = NULL;
static PyObject *kwnames_loop = NULL;    /* ("loop",) */

/* -- BatchCore: the fields of loader._Batch ----------------------------- */

typedef struct {
    PyObject_HEAD
    PyObject *loop;
    PyObject *create_future;
    PyObject *keys;
    PyObject *cache_keys;
    PyObject *futures;
    char closed;
} BatchCore;

static int
batch_traverse(BatchCore *self, visitproc visit, void *arg)
{
    Py_VISIT(self->loop);
    Py_VISIT(self->create_future);
    Py_VISIT(self->keys);
    Py_VISIT(self->cache_keys);
    Py_VISIT(self->futures);
    return 0;
}

static int
batch_clear(BatchCore *self)
{
    Py_CLEAR(self->loop);
    Py_CLEAR(self->create_future);
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

static PyMemberDef batch_members[] = {
    {"loop", T_OBJECT_EX, offsetof(BatchCore, loop), 0, NULL},
    {"create_future", T_OBJECT_EX, offsetof(BatchCore, create_future), 0, NULL},
    {"keys", T_OBJECT_EX, offsetof(BatchCore, keys), 0, NULL},
    {"cache_keys", T_OBJECT_EX, offsetof(BatchCore, cache_keys), 0, NULL},
    {"futures", T_OBJECT_EX, offsetof(BatchCore, futures), 0, NULL},
    {"closed", T_BOOL, offsetof(BatchCore, closed), 0, NULL},
    {NULL},
};

static PyTypeObject BatchCore_Type = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "loadercache._speedups.BatchCore",
    .tp_doc = "The fields of a batch that the C load() reads.",
    .tp_basicsize = sizeof(BatchCore),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE | Py_TPFLAGS_HAVE_GC,
    .tp_new = PyType_GenericNew,
    .tp_dealloc = (destructor)batch_dealloc,
    .tp_traverse = (traverseproc)batch_traverse,
    .tp_clear = (inquiry)batch_clear,
    .tp_members = batch_members,
};

/* -- LoaderCore: the fields of DataLoader that load() reads ------------- */

typedef struct {
    PyObject_HEAD
    PyObject *key_fn;   /* _key_fn: None or a callable */
    PyObject *get;      /* _get: the cache map's get (or _never_cached) */
    PyObject *set;      /* _set: the cache map's set */
    PyObject *caching;  /* _caching: True or False */
    PyObject *batch;    /* _batch: the open batch or None */
    PyObject *limit;    /* _limit: None or the max batch size */
    Py_ssize_t misses;  /* _misses */
    Py_ssize_t hits;    /* _hits */
} LoaderCore;

static int
loader_traverse(LoaderCore *self, visitproc visit, void *arg)
{
    Py_VISIT(self->key_fn);
    Py_VISIT(self->get);
    Py_VISIT(self->set);
    Py_VISIT(self->caching);
    Py_VISIT(self->batch);
    Py_VISIT(self->limit);
    return 0;
}

static int
loader_clear(LoaderCore *self)
{
    Py_CLEAR(self->key_fn);
    Py_CLEAR(self->get);
    Py_CLEAR(self->set);
    Py_CLEAR(self->caching);
    Py_CLEAR(self->batch);
    Py_CLEAR(self->limit);
    return 0;
}

static void
loader_dealloc(LoaderCore *self)
{
    PyObject_GC_UnTrack(self);
    loader_clear(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

/* An attribute __init__ has not set yet: the AttributeError Python gives. */
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

static int
check_fields(LoaderCore *self)
{
    PyObject *me = (PyObject *)self;
    if (missing(me, self->key_fn, "_key_fn") || missing(me, self->get, "_get") ||
        missing(me, self->set, "_set") || missing(me, self->caching, "_caching") ||
        missing(me, self->batch, "_batch") || missing(me, self->limit, "_limit")) {
        return -1;
    }
    return 0;
}

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

static PyObject *
list_append(PyObject *list, PyObject *item, const char *name)
{
    if (!PyList_Check(list)) {
        PyErr_Format(PyExc_TypeError, "batch.%s must be a list", name);
        return NULL;
    }
    if (PyList_Append(list, item) < 0) {
        return NULL;
    }
    return list;
}

/* DataLoader._enqueue(key, cache_key): queue a load that missed the cache. */
static PyObject *
enqueue(LoaderCore *self, PyObject *key, PyObject *cache_key)
{
    PyObject *batch = NULL, *future = NULL, *result;
    batch = Py_NewRef(self->batch);
    int full = batch == Py_None || !PyObject_TypeCheck(batch, &BatchCore_Type);
    if (!full) {
        BatchCore *open = (BatchCore *)batch;
        if (missing(batch, open->keys, "keys")) {
            goto error;
        }
        if (open->closed) {
            full = 1;
        }
        else if (self->limit != Py_None) {
            Py_ssize_t limit = PyLong_AsSsize_t(self->limit);
            if (limit == -1 && PyErr_Occurred()) {
                goto error;
            }
            Py_ssize_t size = PyObject_Length(open->keys);
            if (size < 0) {
                goto error;
            }
            full = size == limit;
        }
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
    if (missing(batch, open->loop, "loop") ||
        missing(batch, open->create_future, "create_future") ||
        missing(batch, open->keys, "keys") ||
        missing(batch, open->futures, "futures") ||
        missing(batch, open->cache_keys, "cache_keys")) {
        goto error;
    }
    if (open->create_future == Py_None) {
        /* What asyncio's own loop.create_future() returns, without its frame. */
        PyObject *loop = Py_NewRef(open->loop);
        future = PyObject_Vectorcall(Future, &loop, 0, kwnames_loop);
        Py_DECREF(loop);
    }
    else {
        future = PyObject_CallNoArgs(open->create_future);
    }
    if (future == NULL) {
        goto error;
    }
    if (self->caching == Py_True) {
        /* First: a cache map that refuses the key (raising) leaves nothing
         * queued. */
        PyObject *args[2] = {cache_key, future};
        result = PyObject_Vectorcall(self->set, args, 2, NULL);
        if (result == NULL) {
            goto error;
        }
        Py_DECREF(result);
        if (self->key_fn != Py_None &&
            list_append(open->cache_keys, cache_key, "cache_keys") == NULL) {
            goto error;
        }
    }
    if (list_append(open->keys, key, "keys") == NULL ||
        list_append(open->futures, future, "futures") == NULL) {
        goto error;
    }
    self->misses++;
    Py_DECREF(batch);
    return future;

error:
    Py_XDECREF(batch);
    Py_XDECREF(future);
    return NULL;
}

/* The TypeError of a failed cache lookup: the unhashable-key message when
 * the key is unhashable, else the error the lookup raised. */
static void
lookup_failed(PyObject *cache_key)
{
    PyObject *type, *value, *traceback;
    if (!PyErr_ExceptionMatches(PyExc_TypeError)) {
        return;
    }
    PyErr_Fetch(&type, &value, &traceback);
    PyObject *error = PyObject_CallOneArg(unhashable_error, cache_key);
    if (error == NULL) {
        Py_XDECREF(type);
        Py_XDECREF(value);
        Py_XDECREF(traceback);
        return;
    }
    if (error == Py_None) {
        /* Hashable: the lookup's own TypeError goes on. */
        Py_DECREF(error);
        PyErr_Restore(type, value, traceback);
        return;
    }
    Py_XDECREF(type);
    Py_XDECREF(value);
    Py_XDECREF(traceback);
    /* raise ... from None */
    PyException_SetCause(error, NULL);
    PyErr_SetObject((PyObject *)Py_TYPE(error), error);
    Py_DECREF(error);
}

PyDoc_STRVAR(load_doc,
"load($self, key, /)\n--\n\n"
"Load one key; return a future of its value (see DataLoader.load).");

static PyObject *
loader_load(LoaderCore *self, PyObject *key)
{
    if (key == Py_None) {
        PyErr_SetString(PyExc_TypeError,
                        "The loader.load() function must be called with a value, "
                        "but got: None.");
        return NULL;
    }
    if (check_fields(self) < 0) {
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
            PyObject *args[3] = {(PyObject *)self, future, key};
            PyObject *mine = PyObject_VectorcallMethod(
                str_share, args, 3 | PY_VECTORCALL_ARGUMENTS_OFFSET, NULL);
            Py_DECREF(future);
            if (mine != NULL) {
                self->hits++;
            }
            return mine;
        }
        int cancelled = done < 0 ? -1 : is_cancelled(future);
        if (cancelled <= 0) {
            Py_DECREF(cache_key);
            if (cancelled < 0) {
                Py_CLEAR(future);
            }
            else {
                self->hits++;
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
    if (check_fields(self) < 0) {
        return NULL;
    }
    return enqueue(self, args[0], args[1]);
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
    PyObject *cache_keys = args[0], *futures = args[1];
    if (!PyList_Check(cache_keys) || !PyList_Check(futures)) {
        PyErr_SetString(PyExc_TypeError, "_settle() takes lists of keys and futures");
        return NULL;
    }
    PyObject *values = PySequence_Fast(args[2], "the batch's values must be iterable");
    if (values == NULL) {
        return NULL;
    }
    int keyed = PyList_GET_SIZE(cache_keys) > 0;
    /* zip(): as far as the shortest; the sizes re-read each time round. */
    for (Py_ssize_t i = 0;; i++) {
        if (i >= PyList_GET_SIZE(futures) || i >= PySequence_Fast_GET_SIZE(values) ||
            (keyed && i >= PyList_GET_SIZE(cache_keys))) {
            break;
        }
        PyObject *future = Py_NewRef(PyList_GET_ITEM(futures, i));
        PyObject *value = Py_NewRef(PySequence_Fast_GET_ITEM(values, i));
        PyObject *result = NULL;
        int done = is_done(future);
        if (done == 0) {
            int error = PyObject_IsInstance(value, PyExc_Exception);
            if (error > 0) {
                PyObject *cache_key =
                    keyed ? PyList_GET_ITEM(cache_keys, i) : no_key;
                Py_INCREF(cache_key);
                PyObject *call[4] = {(PyObject *)self, future, value, cache_key};
                result = PyObject_VectorcallMethod(
                    str_reject, call, 4 | PY_VECTORCALL_ARGUMENTS_OFFSET, NULL);
                Py_DECREF(cache_key);
            }
            else if (error == 0) {
                result = set_result(future, value);
            }
        }
        else if (done > 0) {
            /* Cancelled by its caller while the batch ran. */
            if (keyed) {
                PyObject *cache_key = Py_NewRef(PyList_GET_ITEM(cache_keys, i));
                PyObject *call[3] = {(PyObject *)self, cache_key, future};
                result = PyObject_VectorcallMethod(
                    str_forget, call, 3 | PY_VECTORCALL_ARGUMENTS_OFFSET, NULL);
                Py_DECREF(cache_key);
            }
            else {
                result = Py_NewRef(Py_None);
            }
        }
        Py_DECREF(future);
        Py_DECREF(value);
        if (result == NULL) {
            Py_DECREF(values);
            return NULL;
        }
        Py_DECREF(result);
    }
    Py_DECREF(values);
    Py_RETURN_NONE;
}

static PyMethodDef loader_methods[] = {
    {"load", (PyCFunction)loader_load, METH_O, load_doc},
    {"_enqueue", (PyCFunction)(void (*)(void))loader_enqueue, METH_FASTCALL,
     enqueue_doc},
    {"_settle", (PyCFunction)(void (*)(void))loader_settle, METH_FASTCALL,
     settle_doc},
    {NULL},
};

static PyMemberDef loader_members[] = {
    {"_key_fn", T_OBJECT_EX, offsetof(LoaderCore, key_fn), 0, NULL},
    {"_get", T_OBJECT_EX, offsetof(LoaderCore, get), 0, NULL},
    {"_set", T_OBJECT_EX, offsetof(LoaderCore, set), 0, NULL},
    {"_caching", T_OBJECT_EX, offsetof(LoaderCore, caching), 0, NULL},
    {"_batch", T_OBJECT_EX, offsetof(LoaderCore, batch), 0, NULL},
    {"_limit", T_OBJECT_EX, offsetof(LoaderCore, limit), 0, NULL},
    {"_misses", T_PYSSIZET, offsetof(LoaderCore, misses), 0, NULL},
    {"_hits", T_PYSSIZET, offsetof(LoaderCore, hits), 0, NULL},
    {NULL},
};

static PyTypeObject LoaderCore_Type = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "loadercache._speedups.LoaderCore",
    .tp_doc = "The fields and per-load methods of DataLoader, in C.",
    .tp_basicsize = sizeof(LoaderCore),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE | Py_TPFLAGS_HAVE_GC,
    .tp_new = PyType_GenericNew,
    .tp_dealloc = (destructor)loader_dealloc,
    .tp_traverse = (traverseproc)loader_traverse,
    .tp_clear = (inquiry)loader_clear,
    .tp_methods = loader_methods,
    .tp_members = loader_members,
};

/* -- the module --------------------------------------------------------- */

PyDoc_STRVAR(setup_doc,
"_setup($module, unhashable_error, no_key, /)\n--\n\n"
"Hand the C code the Python objects of loader.py it uses.");

static PyObject *
module_setup(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "_setup() takes exactly 2 arguments");
        return NULL;
    }
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
    Py_INCREF(args[0]);
    Py_XSETREF(unhashable_error, args[0]);
    Py_INCREF(args[1]);
    Py_XSETREF(no_key, args[1]);
    Py_RETURN_NONE;
}

static PyMethodDef module_methods[] = {
    {"_setup", (PyCFunction)(void (*)(void))module_setup, METH_FASTCALL, setup_doc},
    {NULL},
};

static struct PyModuleDef speedups_module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "loadercache._speedups",
    .m_doc = "The per-load steps of loadercache.loader, in C.",
    .m_size = -1,
    .m_methods = module_methods,
};

PyMODINIT_FUNC
PyInit__speedups(void)
{
    if (PyType_Ready(&BatchCore_Type) < 0 || PyType_Ready(&LoaderCore_Type) < 0) {
        return NULL;
    }
    str_share = PyUnicode_InternFromString("_share");
    str_new_batch = PyUnicode_InternFromString("_new_batch");
    str_reject = PyUnicode_InternFromString("_reject");
    str_forget = PyUnicode_InternFromString("_forget");
    str_done = PyUnicode_InternFromString("done");
    str_cancelled = PyUnicode_InternFromString("cancelled");
    str_set_result = PyUnicode_InternFromString("set_result");
    kwnames_loop = Py_BuildValue("(s)", "loop");
    if (str_share == NULL || str_new_batch == NULL || str_reject == NULL ||
        str_forget == NULL || str_done == NULL || str_cancelled == NULL ||
        str_set_result == NULL || kwnames_loop == NULL) {
        return NULL;
    }
    PyObject *module = PyModule_Create(&speedups_module);
    if (module == NULL) {
        return NULL;
    }
    Py_INCREF(&BatchCore_Type);
    if (PyModule_AddObject(module, "BatchCore", (PyObject *)&BatchCore_Type) < 0) {
        Py_DECREF(&BatchCore_Type);
        Py_DECREF(module);
        return NULL;
    }
    Py_INCREF(&LoaderCore_Type);
    if (PyModule_AddObject(module, "LoaderCore", (PyObject *)&LoaderCore_Type) < 0) {
        Py_DECREF(&LoaderCore_Type);
        Py_DECREF(module);
        return NULL;
    }
    return module;
}
