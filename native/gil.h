// Releasing the GIL around native work, safely at interpreter exit.
#pragma once

#include <Python.h>
#include <unistd.h>

#if defined(Py_LIMITED_API) && Py_LIMITED_API < 0x030D0000
#    include <dlfcn.h>
#endif

namespace lcl {

// Set at import: the thread that runs the interpreter's finalization.
inline unsigned long g_main_thread = 0;

// Whether the interpreter is finalizing, asked without holding the GIL (a read of the runtime's state).
// Public as Py_IsFinalizing from 3.13; 3.12 exports the same function as _Py_IsFinalizing, outside the
// limited API. The abi3 build (limited API 3.12, loaded by 3.12 and every later CPython) finds whichever
// the running interpreter has, once at import, among the symbols every extension already links against.
// sys.is_finalizing() would not do: it needs the GIL, and taking it back is what must not happen here.
using IsFinalizingFn = int (*)();
#if defined(Py_LIMITED_API) && Py_LIMITED_API < 0x030D0000
inline IsFinalizingFn g_is_finalizing = nullptr;

// At import: false if this interpreter has neither function (then the module must not load).
inline bool find_is_finalizing() {
    for (const char * name : {"Py_IsFinalizing", "_Py_IsFinalizing"}) {
        if (void * fn = dlsym(RTLD_DEFAULT, name)) {
            g_is_finalizing = reinterpret_cast<IsFinalizingFn>(fn);
            return true;
        }
    }
    return false;
}
#elif PY_VERSION_HEX >= 0x030D0000
inline const IsFinalizingFn g_is_finalizing = Py_IsFinalizing;
inline bool find_is_finalizing() { return true; }
#else
inline const IsFinalizingFn g_is_finalizing = _Py_IsFinalizing;
inline bool find_is_finalizing() { return true; }
#endif

// Like nb::gil_scoped_release, for every call that computes or waits. A daemon thread that comes back
// from native work while the interpreter finalizes would be ended by CPython (pthread_exit) inside a
// destructor, which aborts the process; such a thread is parked instead, as CPython parks daemon
// threads at exit anyway.
class ReleaseGil {
public:
    ReleaseGil() : state_(PyEval_SaveThread()) {}
    ~ReleaseGil() {
        if (g_is_finalizing() != 0 && PyThread_get_thread_ident() != g_main_thread) {
            for (;;) {
                pause();
            }
        }
        PyEval_RestoreThread(state_);
    }
    ReleaseGil(const ReleaseGil &) = delete;
    ReleaseGil & operator=(const ReleaseGil &) = delete;

private:
    PyThreadState * state_;
};

}  // namespace lcl
